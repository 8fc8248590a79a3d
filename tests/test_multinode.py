"""Beyond one node: the process layout read from the launchers' environment, the SLURM recipes'
commands for 2 nodes x 8 GPUs (host list expansion included), and two "nodes" on this machine
(two launcher processes with NNODES=2, NODE_RANK 0/1, MASTER_ADDR 127.0.0.1, one CPU process each,
gloo) for DIFT with DeepSpeed ZeRO-2 and for the evaluation."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dift.core.checkpoint import load_latent_model
from dift.core.distributed import ProcessLayout
from dift.train import make_parser
from evaluation import dsr_eval
from evaluation.results import read_results, summary_path
from scripts.make_demo_benchmark import build_benchmark
from scripts.slurm.hostlist import HostListError, expand_hostlist

ROOT = Path(__file__).resolve().parent.parent
SLURM_2X8 = {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242",
             "SLURM_GPUS_ON_NODE": "8", "HAS_CUDA": "1", "DRY_RUN": "1"}
# stage: (launcher, Python module)
STAGES = {"dift": ("dift/train.sh", "dift.train"), "eval": ("evaluation/eval.sh", "evaluation.dsr_eval"),
          "fourdrl": ("fourdrl/train.sh", "fourdrl.train")}


# ---------------------------------------------------------------------------------------------
# Pure rules


@pytest.mark.parametrize("spec, hosts", [
    ("gpu[01-02]", ["gpu01", "gpu02"]),
    ("gpu01", ["gpu01"]),
    ("gpu[01-02,07],login-a", ["gpu01", "gpu02", "gpu07", "login-a"]),
    ("n[8-10]", ["n8", "n9", "n10"]),
    ("n[098-101]", ["n098", "n099", "n100", "n101"]),
    ("rack[1-2]-gpu[09-10]", ["rack1-gpu09", "rack1-gpu10", "rack2-gpu09", "rack2-gpu10"]),
    ("a1, b2", ["a1", "b2"]),
])
def test_hostlist_expands_like_scontrol(spec, hosts):
    assert expand_hostlist(spec) == hosts


@pytest.mark.parametrize("spec", ["gpu[01-02", "gpu]1[", "gpu[a-b]", "gpu[3-1]", "gpu[[1]]", ""])
def test_hostlist_rejects_bad_lists(spec):
    with pytest.raises(HostListError):
        expand_hostlist(spec)
    done = subprocess.run([sys.executable, str(ROOT / "scripts/slurm/hostlist.py"), spec], capture_output=True,
                          text=True)
    assert done.returncode == 2 and done.stderr.startswith("hostlist: ") and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("env, expected", [
    ({}, ProcessLayout(0, 1, 0, 1, 0, 1)),
    # torchrun, node 1 of 2, 8 processes per node
    ({"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "GROUP_RANK": "1",
      "GROUP_WORLD_SIZE": "2"}, ProcessLayout(9, 16, 1, 8, 1, 2)),
    # the DeepSpeed launcher's names
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "CROSS_RANK": "1", "CROSS_SIZE": "2"},
     ProcessLayout(3, 4, 1, 2, 1, 2)),
    # a launcher that sets only the world: one node
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, ProcessLayout(1, 2, 1, 2, 0, 1)),
])
def test_process_layout_from_each_launcher(env, expected):
    assert ProcessLayout.from_env(env) == expected


def test_layout_line_and_gpu_per_node():
    layout = ProcessLayout.from_env({"RANK": "0", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "GROUP_WORLD_SIZE": "2"})
    assert layout.describe().startswith("world size 16: 2 node(s) x 8 process(es) per node; rank 0 = node 0")
    # Rank 9 is the second process of node 1: its GPU is cuda:1 there, not cuda:9.
    from evaluation import evaluate

    ranks = evaluate.Ranks(rank=9, world_size=16, local_rank=1)
    assert evaluate.resolve_device("cuda", ranks) == torch.device("cuda:1")


# ---------------------------------------------------------------------------------------------
# SLURM recipes, 2 nodes x 8 GPUs, DRY_RUN


def sbatch_dry_run(stage, *flags, path="/usr/bin:/bin"):
    """The srun line and each node's command that scripts/slurm/<stage>.sbatch prints."""
    env = {**os.environ, **SLURM_2X8, "PY": sys.executable, "PATH": path}
    for name in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NUM_GPUS", "SLURM_NODEID", "LAUNCHER"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(ROOT / f"scripts/slurm/{stage}.sbatch"), *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    nodes = {}
    for header, command in zip(lines[1::2], lines[2::2]):
        match = re.fullmatch(r"# node (\d+) \((\S+)\):", header)
        assert match, done.stdout
        nodes[int(match.group(1))] = (match.group(2), shlex.split(command))
    return shlex.split(lines[0]), nodes


@pytest.mark.parametrize("stage", STAGES)
def test_slurm_commands_for_two_nodes_of_eight_gpus(stage):
    launcher, module = STAGES[stage]
    if not (ROOT / launcher).is_file():
        pytest.skip(f"{launcher} does not exist yet")
    srun, nodes = sbatch_dry_run(stage, "--seed", "7")
    assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash",
                    str(ROOT / "scripts/slurm/on_node.sh"), launcher, "--seed", "7"]
    assert sorted(nodes) == [0, 1] and [nodes[i][0] for i in (0, 1)] == ["gpu01", "gpu02"]
    for rank, (_, words) in nodes.items():
        start = words.index("torch.distributed.run")
        assert words[start + 1:start + 7] == ["--nnodes=2", f"--node_rank={rank}", "--master_addr=gpu01",
                                              "--master_port=24242", "--nproc_per_node=8", "-m"]
        assert words[start + 7] == module and words[-2:] == ["--seed", "7"] and "--use_cpu" not in words
    if stage == "dift":
        words = nodes[1][1]
        args = make_parser().parse_args_into_dataclasses(args=words[words.index(module) + 1:])[2]
        assert args.seed == 7 and args.deepspeed_config.endswith("configs/ds_zero2.json")


def test_slurm_prefers_scontrol(tmp_path):
    """Where SLURM is installed, `scontrol show hostnames` names the hosts (our expansion is the fallback)."""
    fake = tmp_path / "scontrol"
    fake.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[01-02]" ] && printf "alpha\\nbeta\\n"\n')
    fake.chmod(0o755)
    _, nodes = sbatch_dry_run("eval", path=f"{tmp_path}:/usr/bin:/bin")
    assert [nodes[i][0] for i in (0, 1)] == ["alpha", "beta"]
    assert all("--master_addr=alpha" in words for _, words in nodes.values())


def test_on_node_reads_its_rank_from_slurm():
    env = {**os.environ, **SLURM_2X8, "PY": sys.executable, "SLURM_NODEID": "1", "PATH": "/usr/bin:/bin"}
    for name in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "NUM_GPUS"):
        env.pop(name, None)
    done = subprocess.run(["bash", "scripts/slurm/on_node.sh", "evaluation/eval.sh", "--greedy"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert shlex.split(done.stdout)[3:8] == ["--nnodes=2", "--node_rank=1", "--master_addr=gpu01",
                                             "--master_port=24242", "--nproc_per_node=8"]
    env.pop("SLURM_NODEID")
    outside = subprocess.run(["bash", "scripts/slurm/on_node.sh", "evaluation/eval.sh"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60)
    assert outside.returncode == 2 and "not inside a SLURM task" in outside.stderr


# ---------------------------------------------------------------------------------------------
# Two nodes on loopback


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_two_nodes(launcher: str, args: list[str], env: dict, timeout: float = 300) -> list[str]:
    """Starts `launcher` as node 0 and node 1 of a 2-node run on loopback; returns each node's output.
    If one node fails, the other is stopped (it would wait for its peer until the rendezvous times out)."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PY": sys.executable,
            "NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "NUM_GPUS": "1", **env}
    procs = [subprocess.Popen(["bash", str(ROOT / launcher), *args], cwd=ROOT, env={**base, "NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for rank in (0, 1)]
    outputs = [""] * 2
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            if any(p.poll() not in (None, 0) for p in procs):
                break
            time.sleep(0.2)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        outputs = [proc.communicate()[0] for proc in procs]
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"node {rank} exit {proc.returncode}:\n{outputs[rank][-6000:]}"
    return outputs


@pytest.mark.slow
def test_two_node_dift_zero2(tiny_base, demo_data, tmp_path):
    """dift/train_cpu.sh on two nodes: 2 steps of ZeRO-2 over gloo, checkpoints written once."""
    env = {"MODEL": str(tiny_base), "DATA": str(demo_data), "OUTPUT_DIR": str(tmp_path), "EXP_NAME": "two_nodes",
           "SAVE_STEPS": "2"}
    outputs = run_two_nodes("dift/train_cpu.sh", ["--max_steps", "2", "--no_gradient_checkpointing"], env)
    for rank, out in enumerate(outputs):
        assert f"[dift/train.sh] torchrun, node {rank} of 2 (rendezvous 127.0.0.1:" in out
        assert "1 CPU process(es) on this node, world size 2" in out
    run_dir = tmp_path / "two_nodes"
    log_text = (run_dir / "log.txt").read_text()
    assert ("world size 2: 2 node(s) x 1 process(es) per node; rank 0 = node 0, local rank 0; "
            "global batch 2 = 1 per process x 1 accumulation x 2 processes") in log_text
    assert log_text.count("DIFT two_nodes: 4 samples") == 1  # one log, written by rank 0
    final = run_dir / "checkpoints"
    state = json.loads((final / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    assert state["train_batch_size"] == 1 and state["global_step"] == 2
    # ZeRO-2 partitions of both ranks, one per node, in the shared folder; one model per checkpoint.
    step = final / "checkpoint-2"
    optim = sorted(p.name for p in (step / "global_step2").glob("*zero_pp_rank_*_optim_states.pt"))
    assert len(optim) == 2 and {re.search(r"zero_pp_rank_(\d+)", n).group(1) for n in optim} == {"0", "1"}
    assert len(list(final.glob("*.safetensors"))) == 1 and len(list((run_dir / "tensorboard").iterdir())) == 1
    assert load_latent_model(final).latent.latent_size == 4


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """13 questions over 7 videos; questions 5 and 12 (corrupt video) and 6 (missing) are skipped."""
    return build_benchmark(tmp_path_factory.mktemp("bench"), per_type=1, frames=8, fps=4, size=56, missing=1,
                           corrupt=1)


@pytest.mark.slow
def test_two_node_evaluation_equals_one_process(bench, tiny_latent, tmp_path, one_torch_thread):
    """evaluation/eval.sh on two nodes, resuming a results file that holds the first 2 answers: every
    other question answered exactly once across the nodes, and the same results file and summary as
    one process (greedy, with a repetition penalty so that answers differ between questions)."""
    def argv(output):
        return ["--model_path", str(tiny_latent), "--benchmark_path", str(bench / "benchmark.parquet"),
                "--video_root", str(bench / "videos"), "--frame_root", str(tmp_path / "frames"),
                "--output_file", str(output), "--greedy", "--repetition_penalty", "3", "--max_new_tokens", "8",
                "--num_workers", "1", "--batch_size", "2"]

    reference = dsr_eval.main(argv(tmp_path / "one.jsonl"))
    expected = (tmp_path / "one.jsonl").read_text()
    assert len({r["raw"] for r in read_results(tmp_path / "one.jsonl")}) > 5  # answers differ

    output = tmp_path / "shared" / "two.jsonl"
    output.parent.mkdir()
    output.write_text("".join(expected.splitlines(keepends=True)[:2]))  # questions 0 and 1 done already
    outputs = run_two_nodes("evaluation/eval.sh", argv(output), {})
    assert output.read_text() == expected
    assert not list(output.parent.glob("two.part*"))  # per-rank parts merged by rank 0
    summary = json.loads(summary_path(output).read_text())
    assert summary["world_size"] == 2
    assert {k: v for k, v in summary.items() if k not in ("results_file", "world_size")} == \
           {k: v for k, v in reference.items() if k not in ("results_file", "world_size")}

    answered, skipped = [], []
    for rank, out in enumerate(outputs):
        assert f"[evaluation/eval.sh] node {rank} of 2" in out and "world size 2" in out
        assert f"rank {rank}/2: 13 questions loaded, 2 already done" in out
        answered.append({int(i) for i in re.findall(r"\] \[(\d+)\] \S+ gt=\S+ pred=", out)})
        skipped.append({int(i) for i in re.findall(r"skipping question (\d+) ", out)})
    assert "world size 2: 2 node(s) x 1 process(es) per node" in outputs[0]
    assert not answered[0] & answered[1] and not skipped[0] & skipped[1]
    assert answered[0] | answered[1] == {r["index"] for r in read_results(output)} - {0, 1}
    assert skipped[0] | skipped[1] == {5, 6, 12}
    assert all(i % 2 == rank for rank in (0, 1) for i in answered[rank] | skipped[rank])  # i mod world size


RL_PROBE = '''
import json, os
from pathlib import Path


def record_prompts(completions, source, **kwargs):
    """Writes which prompts this rank scored; rewards 1, 0, 1, 0, ... (no advantage is 0)."""
    path = Path(os.environ["FOURDRL_PROBE_DIR"]) / f"rank{os.environ['RANK']}.jsonl"
    with open(path, "a") as fh:
        fh.write(json.dumps({"sources": list(source), "node": os.environ.get("GROUP_RANK")}) + "\\n")
    return [float(i % 2 == 0) for i in range(len(completions))]
'''


@pytest.mark.slow
def test_two_node_fourdrl_ranks_get_disjoint_prompts(tiny_latent, tmp_path):
    """fourdrl/train_cpu.sh on two nodes (one process each, ZeRO-2 over gloo): 2 GRPO steps; each step
    the two ranks, on different nodes, score disjoint prompts (G copies of one each); one checkpoint."""
    from scripts.make_demo_rl_data import write_demo_rl_data

    data = write_demo_rl_data(tmp_path / "rl", num_samples=4, num_frames=2, size=56)
    (tmp_path / "probe").mkdir()
    (tmp_path / "rl_probe.py").write_text(RL_PROBE)
    env = {"MODEL": str(tiny_latent), "DATA": str(data), "OUTPUT_DIR": str(tmp_path), "EXP_NAME": "two_nodes",
           "PROMPTS_PER_DEVICE": "1", "NUM_GENERATIONS": "2", "MAX_COMPLETION_LENGTH": "8", "SAVE_STEPS": "2",
           "FOURDRL_PROBE_DIR": str(tmp_path / "probe"), "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    flags = ["--max_steps", "2", "--reward_funcs", "rl_probe.record_prompts", "--reward_weights", "1.0",
             "--no_gradient_checkpointing", "--max_frames", "2"]
    outputs = run_two_nodes("fourdrl/train_cpu.sh", flags, env)
    for rank, out in enumerate(outputs):
        assert f"[fourdrl/train.sh] torchrun, node {rank} of 2 (rendezvous 127.0.0.1:" in out
    log_text = (tmp_path / "two_nodes" / "logs" / "train.log").read_text()
    assert ("world size 2: 2 node(s) x 1 process(es) per node; rank 0 = node 0, local rank 0; "
            "global batch 4 completions = 2 per process x 1 accumulation x 2 processes (2 prompts x G 2)") in log_text
    seen = [[json.loads(line) for line in (tmp_path / "probe" / f"rank{r}.jsonl").read_text().splitlines()]
            for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 2
    for a, b in zip(*seen):
        assert (a["node"], b["node"]) == ("0", "1")
        assert len(set(a["sources"])) == len(set(b["sources"])) == 1 and set(a["sources"]).isdisjoint(b["sources"])
    final = tmp_path / "two_nodes" / "checkpoints"
    assert [e["step"] for e in json.loads((final / "trainer_state.json").read_text())["log_history"] if "loss" in e] == [1, 2]
    assert len(list(final.glob("*.safetensors"))) == 1 and (final / "checkpoint-2" / "checkpoint_complete.json").is_file()
