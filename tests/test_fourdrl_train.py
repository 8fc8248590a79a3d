"""The 4DRL command line and launchers (spec fourdrl.md sections 7, 9, 11): the original's flags and
defaults, YAML configs, one-line errors and exit codes, and the 2-process torchrun + DeepSpeed ZeRO-2
run on CPU that trains, saves, resumes and is scored by the DSR evaluation."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dift.core.cli import UsageError
from dift.core.training_checkpoint import COMPLETE_MARKER, mark_complete
from fourdrl.config import FourDRLConfig
from fourdrl.recipe import check_run_settings, make_parser, resolve_resume
from fourdrl.train import HELP_FILE, cli, render_help
from scripts.make_demo_rl_data import write_demo_rl_data

ROOT = Path(__file__).resolve().parent.parent


def run(cmd, env=None, timeout=600):
    # One thread per process: on a small shared CPU, torch's thread pool oversubscribes the cores.
    full_env = {"OMP_NUM_THREADS": "1", **os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def parse(*argv):
    return make_parser().parse_args_and_config(list(argv))


@pytest.fixture(scope="module")
def rl_data(tmp_path_factory):
    return write_demo_rl_data(tmp_path_factory.mktemp("rl-data"), num_samples=4, seed=0, num_frames=2, size=56)


def test_flags_and_defaults_are_the_originals(tmp_path):
    script, args, model = parse("--output_dir", str(tmp_path))
    assert script.reward_funcs == ["accuracy", "format"] and args.reward_weights == [1.0, 0.2]
    assert (args.num_generations, args.per_device_train_batch_size, args.steps_per_generation) == (8, 64, 1)
    assert (args.gradient_accumulation_steps, args.num_train_epochs, args.learning_rate) == (2, 1.0, 1e-6)
    assert (args.beta, args.epsilon, args.loss_type, args.use_bias_correction_kl) == (0.01, 0.2, "grpo", False)
    assert (args.temperature, args.top_p, args.top_k, args.repetition_penalty) == (1.0, 0.9, 0, 1.0)
    assert (args.max_completion_length, args.logging_steps, args.save_steps) == (8192, 1, 100)
    assert (args.seed, args.data_seed, args.scale_rewards, args.num_iterations) == (42, 42, "group", 1)
    assert args.save_total_limit is None and args.gradient_checkpointing and not args.latent_start_in_loss
    assert (args.max_frames, args.max_frame_side, args.latent_replay) == (16, 448, True)
    assert args.bf16 is False and args.use_cpu  # this machine has no GPU
    assert args.output_dir == str(tmp_path / "4dthinker_rl_grpo" / "checkpoints")
    assert not model.use_peft and model.model_name_or_path is None


def test_yaml_config_and_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"output_dir: {tmp_path}\nexp_name: yaml_run\nnum_generations: 4\n"
                      "per_device_train_batch_size: 8\nuse_peft: true\nlora_r: 16\nreward_funcs: [accuracy]\n"
                      "reward_weights: [1.0]\n")
    script, args, model = parse("--config", str(config), "--beta", "0.02")
    assert (args.num_generations, args.per_device_train_batch_size, args.beta) == (4, 8, 0.02)
    assert args.run_dir == str(tmp_path / "yaml_run") and model.use_peft and model.lora_r == 16
    assert script.reward_funcs == ["accuracy"]


@pytest.mark.parametrize("overrides, message", [
    ({"per_device_train_batch_size": 12}, "not a multiple of --num_generations 8"),
    ({"use_vllm": True}, "--use_vllm is not supported"),
    ({"mask_truncated_completions": True}, "--mask_truncated_completions is not supported"),
    ({"exp_name": "a/b"}, "--exp_name must be a non-empty folder name"),
])
def test_settings_that_cannot_work_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        FourDRLConfig(output_dir=str(tmp_path), **overrides)


def test_resume_rule(tmp_path):
    assert resolve_resume(None, tmp_path / "none") is None
    for step in (2, 10, 12):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 10):  # checkpoint-12: a save cut short (no completion marker)
        mark_complete(tmp_path / f"checkpoint-{step}", step)
    assert resolve_resume(None, tmp_path) == str(tmp_path / "checkpoint-10")  # the original resumes by itself
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-10")
    assert resolve_resume("false", tmp_path) is None
    assert resolve_resume(str(tmp_path / "checkpoint-2"), tmp_path) == str(tmp_path / "checkpoint-2")
    with pytest.raises(UsageError, match="no checkpoint folder"):
        resolve_resume(str(tmp_path / "checkpoint-3"), tmp_path)
    with pytest.raises(UsageError, match="incomplete"):
        resolve_resume(str(tmp_path / "checkpoint-12"), tmp_path)


ALTERNATING = """
def alternating(completions, **kwargs):
    return [float(i % 2 == 0) for i in range(len(completions))]
"""


def test_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_latent, rl_data, monkeypatch):
    """One process, no DeepSpeed: 2 steps straight, then the same run as if killed while saving step 2,
    rerun with the same command. The resumed run must start from the trained weights (the Trainer's own loader matched no
    key of the checkpoint format) with the optimizer and RNG restored: the final weights are equal."""
    base = ["--model_name_or_path", str(tiny_latent), "--data_path", str(rl_data), "--output_dir", str(tmp_path),
            "--num_generations", "2", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--max_completion_length", "8", "--max_frames", "2", "--learning_rate", "1e-3", "--save_steps", "1",
            "--no_gradient_checkpointing", "--report_to", "none",
            "--reward_funcs", "rl_alternating.alternating", "--reward_weights", "1.0"]  # nonzero advantages
    (tmp_path / "rl_alternating.py").write_text(ALTERNATING)
    monkeypatch.syspath_prepend(str(tmp_path))

    def run_cli(*argv):
        with pytest.raises(SystemExit) as exit_:
            cli([*base, *argv])
        assert exit_.value.code == 0

    run_cli("--exp_name", "run", "--max_steps", "2")
    checkpoints = tmp_path / "run" / "checkpoints"
    straight = load_file(checkpoints / "model.safetensors")
    # As if killed while saving step 2: its checkpoint has no completion marker and a torn weight file,
    # and the final model was never written. The same command again resumes from step 1.
    (checkpoints / "checkpoint-2" / COMPLETE_MARKER).unlink()
    (checkpoints / "checkpoint-2" / "model.safetensors").write_bytes(b"torn")
    (checkpoints / "model.safetensors").unlink()
    run_cli("--exp_name", "run", "--max_steps", "2")
    log_text = (tmp_path / "run" / "logs" / "train.log").read_text()
    assert f"resuming from {checkpoints / 'checkpoint-1'}" in log_text
    assert "passing over" in log_text
    resumed = load_file(checkpoints / "model.safetensors")
    initial = load_file(tiny_latent / "model.safetensors")
    assert any(not torch.equal(initial[k], straight[k]) for k in initial)  # training moved the weights
    assert max((straight[k] - resumed[k]).abs().max().item() for k in straight) == 0.0
    assert re.search(r"loaded \d+ weight tensors", log_text)


def test_user_mistakes_end_with_one_line_and_the_exit_code(tmp_path, tiny_latent, tiny_base, rl_data, capsys,
                                                           monkeypatch):
    base = ["--output_dir", str(tmp_path), "--model_name_or_path", str(tiny_latent), "--data_path", str(rl_data),
            "--num_generations", "2", "--per_device_train_batch_size", "2"]

    def last_error(code, *argv):
        with pytest.raises(SystemExit) as exit_:
            cli([*base, *argv])
        assert exit_.value.code == code
        err = capsys.readouterr().err.strip().splitlines()
        assert err and "Traceback" not in "\n".join(err)
        return err[-1]

    assert "unknown reward function 'length'; valid: accuracy, format" in last_error(2, "--reward_funcs", "length")
    assert "--reward_weights has 2 value(s) for 1 --reward_funcs" in last_error(2, "--reward_funcs", "accuracy")
    bad = rl_data.parent / "bad.jsonl"  # next to the data: its frame paths are relative to the JSONL
    bad.write_text(rl_data.read_text() + '{"Question": "q", "A": "x", "Correct": "A"}\n')
    assert last_error(1, "--data_path", str(bad)).startswith(
        f"python -m fourdrl.train: failed: {bad}:5: missing field 'frame_paths' or 'video_path'")
    assert "the latent tokens" in last_error(1, "--model_name_or_path", str(tiny_base))
    assert "RL data file not found" in last_error(1, "--data_path", str(tmp_path / "nope.jsonl"))
    script, args, _ = parse(*base)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it (after the flags were parsed in one process)
    with pytest.raises(UsageError, match="several processes need --deepspeed"):
        check_run_settings(script, args)


def test_stored_help_is_the_parsers():
    """`--help` prints fourdrl/help.txt (fast: no TRL import); it must be what the parser renders.
    After a flag or TRL change: FOURDTHINKER_LIVE_HELP=1 python -m fourdrl.train --help > fourdrl/help.txt"""
    def flags(text):  # the flag names and our own defaults: what a stale file would get wrong
        return sorted(set(re.findall(r"--[a-z0-9_]+", text))), re.findall(r"\(default: ([^)]*)\)", text)[:40]

    stored, live = HELP_FILE.read_text(), render_help()
    assert stored.splitlines()[0] == live.splitlines()[0] and flags(stored) == flags(live)


def launcher_command(script, env):
    out = run(["bash", str(ROOT / "fourdrl" / script)], env={"DRY_RUN": "1", **env}).stdout
    return shlex.split(out.strip().splitlines()[-1])


def test_launchers_carry_the_original_values(tmp_path):
    cmd = launcher_command("train.sh", {"HAS_CUDA": "1"})
    assert cmd[1:7] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=8", "-m", "fourdrl.train"]
    argv = cmd[7:]
    flags = {}
    for i, item in enumerate(argv):
        if item.startswith("--"):
            values = [v for v in argv[i + 1:i + 3] if not v.startswith("--")][:2 if item in (
                "--reward_funcs", "--reward_weights") else 1]
            flags[item] = " ".join(values)
    assert flags["--model_name_or_path"] == "./model/dift/checkpoints"
    assert flags["--data_path"] == "./data/4drl_data_filtered.jsonl"
    assert (flags["--output_dir"], flags["--exp_name"]) == ("./model/4drl", "4dthinker_rl_grpo")
    assert flags["--deepspeed"].endswith("configs/ds_zero2_grpo.json")
    expected = {"--reward_funcs": "accuracy format", "--reward_weights": "1.0 0.2", "--num_generations": "8",
                "--per_device_train_batch_size": "64", "--gradient_accumulation_steps": "2",
                "--num_train_epochs": "1", "--learning_rate": "1e-6", "--beta": "0.01",
                "--max_completion_length": "8192", "--logging_steps": "1", "--save_steps": "100", "--seed": "42",
                "--data_seed": "42"}
    assert {k: flags[k] for k in expected} == expected
    script, args, _ = parse(*argv, "--output_dir", str(tmp_path))  # every flag the launcher passes is the CLI's
    assert args.deepspeed and args.per_device_train_batch_size == 64

    cpu = launcher_command("train_cpu.sh", {"MODEL": "m", "DATA": "d"})
    assert cpu[4] == "--nproc_per_node=2" and "--per_device_train_batch_size" in cpu
    assert cpu[cpu.index("--per_device_train_batch_size") + 1] == "8" and cpu[cpu.index("--num_generations") + 1] == "4"


def test_the_grpo_deepspeed_config_is_the_originals():
    config = json.loads((ROOT / "configs" / "ds_zero2_grpo.json").read_text())
    zero = config["zero_optimization"]
    assert zero["stage"] == 2 and zero["reduce_scatter"] and zero["contiguous_gradients"] and not zero["overlap_comm"]
    assert zero["allgather_bucket_size"] == zero["reduce_bucket_size"] == 2e8
    assert config["bf16"]["enabled"] == config["train_batch_size"] == config["gradient_clipping"] == "auto"


PROBE = '''
import json, os
from pathlib import Path


def record_prompts(completions, source, trainer_state, **kwargs):
    """Writes which prompts this rank scored; rewards 1, 0, 1, 0, ... (no advantage is 0)."""
    path = Path(os.environ["FOURDRL_PROBE_DIR"]) / f"rank{os.environ.get('RANK', '0')}.jsonl"
    with open(path, "a") as fh:
        fh.write(json.dumps({"step": trainer_state.global_step, "sources": list(source)}) + "\\n")
    return [float(i % 2 == 0) for i in range(len(completions))]
'''


@pytest.mark.slow
def test_two_process_deepspeed_zero2_trains_resumes_and_is_evaluated(tiny_latent, rl_data, tmp_path):
    """`fourdrl/train_cpu.sh`: torchrun, 2 CPU processes, DeepSpeed ZeRO-2 over gloo. One step and a
    checkpoint, then a second run resumes from it for step 2; each rank saw its own prompts; every
    parameter outside the frozen vision tower moved; `evaluation.dsr_eval` scores the result."""
    (tmp_path / "probe").mkdir()
    (tmp_path / "rl_probe.py").write_text(PROBE)
    env = {"MODEL": str(tiny_latent), "DATA": str(rl_data), "OUTPUT_DIR": str(tmp_path), "EXP_NAME": "zero2",
           "PROMPTS_PER_DEVICE": "1", "NUM_GENERATIONS": "2", "MAX_COMPLETION_LENGTH": "16", "SAVE_STEPS": "1",
           "LR": "1e-3", "FOURDRL_PROBE_DIR": str(tmp_path / "probe"), "PYTHONPATH": str(tmp_path)}
    flags = ["--reward_funcs", "rl_probe.record_prompts", "format", "--reward_weights", "1.0", "0.2",
             "--no_gradient_checkpointing"]
    run(["bash", str(ROOT / "fourdrl" / "train_cpu.sh"), "--max_steps", "1", *flags], env=env)
    run(["bash", str(ROOT / "fourdrl" / "train_cpu.sh"), "--max_steps", "2", *flags], env=env)

    run_dir = tmp_path / "zero2"
    log_text = (run_dir / "logs" / "train.log").read_text()
    assert "2 process(es)" in log_text and f"resuming from {run_dir / 'checkpoints' / 'checkpoint-1'}" in log_text
    assert "replay/max_abs_logprob_diff=" in log_text and list((run_dir / "tensorboard").glob("events.*"))
    # DeepSpeed's own checkpoint: the ZeRO-2 optimizer partitions of both ranks.
    assert len(list((run_dir / "checkpoints" / "checkpoint-1" / "global_step1").glob("*zero_pp_rank_*optim_states.pt"))) == 2
    state = json.loads((run_dir / "checkpoints" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2]
    # Prompts are sharded: each step, the ranks score disjoint prompts, each as one group of G copies.
    seen = {rank: [json.loads(line) for line in (tmp_path / "probe" / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in (0, 1)}
    for a, b in zip(seen[0], seen[1]):
        assert len(a["sources"]) == len(b["sources"]) == 2 and len(set(a["sources"])) == len(set(b["sources"])) == 1
        assert a["step"] == b["step"] and not set(a["sources"]) & set(b["sources"])
    # Every parameter outside the frozen vision tower moved; the tower did not.
    initial = load_file(tiny_latent / "model.safetensors")
    final = load_file(run_dir / "checkpoints" / "model.safetensors")
    assert set(initial) <= set(final)  # (DeepSpeed's save also writes the tied head, equal to the embedding)
    moved = {k for k in initial if not torch.equal(initial[k], final[k])}
    vision = {k for k in initial if ".visual." in k or k.startswith("visual.")}
    assert vision and not moved & vision and moved == set(initial) - vision

    from evaluation import dsr_eval
    from scripts.make_demo_benchmark import build_benchmark

    bench = build_benchmark(tmp_path / "bench", per_type=1, frames=4, fps=2, size=56)
    summary = dsr_eval.main(["--model_path", str(run_dir / "checkpoints"), "--benchmark_path",
                             str(bench / "benchmark.parquet"), "--video_root", str(bench / "videos"),
                             "--output_file", str(tmp_path / "eval.jsonl"), "--max_new_tokens", "4",
                             "--batch_size", "13", "--num_workers", "0", "--frame_root", str(tmp_path / "frames")])
    assert (summary["eval_count"], summary["skipped"], summary["total"]) == (13, 0, 13)
    assert len((tmp_path / "eval.jsonl").read_text().splitlines()) == 13
