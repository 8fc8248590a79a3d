"""The shell launchers: flags passed through with the Python commands' names (and winning over the
recipe), the shared helpers of scripts/launch_common.sh, usage errors, and DRY_RUN=1 printing the
commands while writing nothing."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dift.train import make_parser
from evaluation.dsr_eval import parse_args as parse_eval_args

ROOT = Path(__file__).resolve().parent.parent
# Everything a launcher reads from the repository: scripts, configs (nothing else is needed to print).
LAUNCHER_FILES = ["dift/train.sh", "dift/train_cpu.sh", "dift/train_single_gpu.sh", "evaluation/eval.sh",
                  "evaluation/batch_dsr_eval.sh", "scripts/launch_common.sh", "scripts/slurm", "configs",
                  "fourdrl/train.sh"]


def bash(args, env=None, cwd=ROOT, check=True):
    full = {**os.environ, "PY": sys.executable, "HAS_CUDA": "0", **(env or {})}
    for name in ("MODEL", "DATA", "OUTPUT_DIR", "EXP_NAME", "NNODES", "NODE_RANK", "MASTER_ADDR", "NUM_GPUS"):
        if env is None or name not in env:
            full.pop(name, None)
    done = subprocess.run(["bash", *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"{args}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def dry_run(script, *flags, env=None, cwd=ROOT):
    """The command a launcher prints under DRY_RUN=1 (its last line), as words."""
    out = bash([script, *flags], env={"DRY_RUN": "1", **(env or {})}, cwd=cwd).stdout
    return shlex.split(out.strip().splitlines()[-1])


def after(words, marker):
    """The words after `-m MODULE` (the Python command's own flags)."""
    return words[words.index(marker) + 1:]


def common(snippet):
    """Runs `snippet` in bash after sourcing scripts/launch_common.sh; its stdout."""
    code = f'set -euo pipefail; ROOT={shlex.quote(str(ROOT))}; source "$ROOT/scripts/launch_common.sh"; {snippet}'
    return bash(["-c", code]).stdout


@pytest.mark.parametrize("args, expected", [
    ("", "DEF"),
    ("--output_dir a", "a"),
    ("--output_dir=a b", "a"),
    ("--output_dir a --max_steps 3 --output_dir=c", "c"),
    ("--output_dir_x a", "DEF"),
    ("--max_steps 3 --output_dir", "DEF"),  # no value after the last one
])
def test_flag_value_reads_the_last_value(args, expected):
    assert common(f"flag_value output_dir DEF {args}") == expected + "\n"


def test_print_command_quotes_each_word():
    words = ["python", "-m", "x", "--question", "Which way?\n\nA. Left", "--empty", "", "it's"]
    out = common("print_command " + " ".join(shlex.quote(w) for w in words))
    assert out.endswith("\n") and not out.endswith(" \n")
    assert bash(["-c", f"for w in {out.strip()}; do printf '<%s>' \"$w\"; done"]).stdout == "".join(
        f"<{w}>" for w in words)


def test_launch_torchrun_one_node_and_several():
    assert common('NNODES=1; unset MASTER_ADDR; PY=py; launch_layout; launch_torchrun 4; echo "${TORCHRUN[*]}"') == \
        "py -m torch.distributed.run --standalone --nproc_per_node=4\n"
    out = common('NNODES=3 NODE_RANK=2 MASTER_ADDR=h0 MASTER_PORT=1234 PY=py; launch_layout; launch_torchrun 8; '
                 'echo "${TORCHRUN[*]}"')
    assert out == ("py -m torch.distributed.run --nnodes=3 --node_rank=2 --master_addr=h0 --master_port=1234 "
                   "--nproc_per_node=8\n")


@pytest.mark.parametrize("env, message", [
    ({"NNODES": "2", "NODE_RANK": "0"}, "NNODES=2 needs MASTER_ADDR"),
    ({"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"}, "NODE_RANK must be 0 .. 1 (NNODES=2), got '2'"),
    ({"NNODES": "two"}, "NNODES must be a positive integer, got 'two'"),
    ({"NUM_GPUS": "0"}, "NUM_GPUS must be a positive integer, got '0'"),
    ({"HAS_CUDA": "1", "NNODES": "2", "MASTER_ADDR": "h", "LAUNCHER": "deepspeed"}, "LAUNCHER=deepspeed runs one node"),
])
def test_bad_settings_are_usage_errors(env, message):
    done = bash(["dift/train.sh"], env={"DRY_RUN": "1", **env}, check=False)
    assert done.returncode == 2 and done.stderr.startswith(f"dift/train.sh: {message}")
    assert len(done.stderr.strip().splitlines()) == 1 and not done.stdout


def test_dift_flags_pass_through_and_win():
    """A flag after the launcher wins over the recipe's value, in both spellings; the result parses."""
    for script in ("dift/train.sh", "dift/train_single_gpu.sh", "dift/train_cpu.sh"):
        words = dry_run(script, "--learning_rate", "3e-5", "--output_dir=/tmp/elsewhere", "--max_steps", "7",
                        env={"MODEL": "m", "DATA": "d"})
        model, data, train = make_parser().parse_args_into_dataclasses(args=after(words, "dift.train"))
        assert (train.learning_rate, train.output_dir, train.max_steps) == (3e-5, "/tmp/elsewhere", 7), script
        assert (model.model, data.data_path) == ("m", "d")


def test_multi_node_dift_command():
    gpu = dry_run("dift/train.sh", env={"HAS_CUDA": "1", "NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1",
                                        "MASTER_PORT": "6000"})
    assert gpu[1:9] == ["-m", "torch.distributed.run", "--nnodes=2", "--node_rank=1", "--master_addr=10.0.0.1",
                        "--master_port=6000", "--nproc_per_node=8", "-m"] and gpu[9] == "dift.train"
    args = make_parser().parse_args_into_dataclasses(args=after(gpu, "dift.train"))[2]
    assert args.deepspeed_config.endswith("configs/ds_zero2.json")  # DeepSpeed still trains, under torchrun
    one = dry_run("dift/train.sh", env={"HAS_CUDA": "1"})
    assert one[1:4] == ["-m", "deepspeed.launcher.runner", "--num_gpus=8"]  # one node: the original's launcher


def test_eval_launcher_commands():
    flags = ["--model_path", "ckpt", "--output_file", "r.jsonl", "--greedy"]
    alone = dry_run("evaluation/eval.sh", *flags, env={"NUM_GPUS": "1"})
    assert alone[1:] == ["-m", "evaluation.dsr_eval", *flags]
    one_node = dry_run("evaluation/eval.sh", *flags, env={"NUM_GPUS": "4"})
    assert one_node[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    nodes = dry_run("evaluation/eval.sh", *flags, env={"NUM_GPUS": "2", "NNODES": "3", "NODE_RANK": "2",
                                                        "MASTER_ADDR": "h0"})
    assert nodes[1:8] == ["-m", "torch.distributed.run", "--nnodes=3", "--node_rank=2", "--master_addr=h0",
                          "--master_port=29500", "--nproc_per_node=2"]
    args = parse_eval_args(after(nodes, "evaluation.dsr_eval"))
    assert (args.model_path, args.output_file, args.greedy) == ("ckpt", "r.jsonl", True)


def test_batch_eval_names_its_outputs_for_resuming():
    out = bash(["evaluation/batch_dsr_eval.sh", "0 exp_latent2:7", "1 other", "--", "--greedy"],
               env={"DRY_RUN": "1", "RESULTS_ROOT": "res", "MODEL_ROOT": "/m"}).stdout.splitlines()
    first = shlex.split(out[0])
    assert first[:2] == ["env", "CUDA_VISIBLE_DEVICES=0"] and first[-2:] == [">>res/exp_latent2-7/dsr_eval.log", "2>&1"]
    args = parse_eval_args(after(first[:-2], "evaluation.dsr_eval"))
    assert (args.output_file, args.latent_size, args.greedy) == ("res/exp_latent2-7/dsr_eval.jsonl", 2, True)
    assert args.model_path == "/m/exp_latent2/checkpoints/checkpoint-7"
    assert "--output_file res/other/dsr_eval.jsonl" in out[1]
    again = bash(["evaluation/batch_dsr_eval.sh", "0 exp_latent2:7", "1 other", "--", "--greedy"],
                 env={"DRY_RUN": "1", "RESULTS_ROOT": "res", "MODEL_ROOT": "/m"}).stdout.splitlines()
    assert again == out  # no timestamp: a rerun writes to (and resumes) the same files
    tagged = bash(["evaluation/batch_dsr_eval.sh", "0 x"], env={"DRY_RUN": "1", "RUN_TAG": "greedy"}).stdout
    assert "--output_file ./results/x/dsr_eval_greedy.jsonl" in tagged
    refused = bash(["evaluation/batch_dsr_eval.sh", "0 x", "--", "--output_file", "a.jsonl"], check=False)
    assert refused.returncode == 2 and "--output_file is chosen per run" in refused.stderr


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


def test_dry_run_writes_nothing(tmp_path):
    """Every launcher, run from a copy of the repository's launcher files with DRY_RUN=1 and nothing
    built yet: the copy and the working folder are unchanged (no tiny-model build, data, folders)."""
    repo, work = tmp_path / "repo", tmp_path / "work"
    for name in LAUNCHER_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name)
        elif source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    work.mkdir()
    before = snapshot(repo), snapshot(work)
    slurm = {"SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7", "SLURM_GPUS_ON_NODE": "8",
             "HAS_CUDA": "1"}
    runs = [("dift/train_cpu.sh", {}), ("dift/train.sh", {}), ("dift/train_single_gpu.sh", {}),
            ("evaluation/eval.sh", {"NUM_GPUS": "2"}), ("evaluation/batch_dsr_eval.sh", {}),
            ("scripts/slurm/dift.sbatch", slurm), ("scripts/slurm/eval.sbatch", slurm)]
    if (repo / "fourdrl/train.sh").is_file():
        runs += [("fourdrl/train.sh", {}), ("scripts/slurm/fourdrl.sbatch", slurm)]
    for script, env in runs:
        out = bash([str(repo / script)], env={"DRY_RUN": "1", "PYTHONPATH": str(ROOT), **env}, cwd=work).stdout
        assert out.strip(), script
    cpu = bash([str(repo / "dift/train_cpu.sh")], env={"DRY_RUN": "1"}, cwd=work).stdout.splitlines()
    assert [line.split()[:3] for line in cpu[:2]] == [["#", "first", "builds:"]] * 2  # said, not done
    assert (snapshot(repo), snapshot(work)) == before
