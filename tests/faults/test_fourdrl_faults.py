"""Fault injection for 4DRL training: a real `python -m fourdrl.train` is stopped by Ctrl-C (SIGINT)
after a checkpoint, then by SIGKILL at a seeded moment (while a checkpoint is being written when the
poll catches it), and rerun with the same command each time, which resumes from the newest complete
checkpoint. The final weights and every step's logged loss and reward must equal an uninterrupted
run's; the Ctrl-C must exit 130 with one line saying what was kept, and no traceback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dift.core.training_checkpoint import checkpoint_step, is_complete_checkpoint, step_checkpoints
from scripts.make_demo_rl_data import write_demo_rl_data

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
STEPS = 5
SEED = 20261205
REWARD = """
def alternating(completions, **kwargs):
    return [float(i % 2 == 0) for i in range(len(completions))]
"""


def rl_argv(model: Path, data: Path, out: Path, exp: str) -> list[str]:
    return [sys.executable, "-m", "fourdrl.train", "--model_name_or_path", str(model), "--data_path", str(data),
            "--output_dir", str(out), "--exp_name", exp, "--num_generations", "2",
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--max_completion_length", "8",
            "--max_frames", "2", "--learning_rate", "1e-3", "--max_steps", str(STEPS), "--save_steps", "1",
            "--no_gradient_checkpointing", "--report_to", "none", "--reward_funcs", "rl_reward.alternating",
            "--reward_weights", "1.0"]


def start(argv: list[str], env: dict, stderr_path: Path) -> subprocess.Popen:
    with open(stderr_path, "w") as stderr:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def wait_for(proc: subprocess.Popen, condition, interval: float, timeout: float = 240.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(interval)
    raise TimeoutError(f"condition not reached in {timeout}s")


def newest_complete_step(checkpoints: Path) -> int:
    return max((checkpoint_step(p) for p in step_checkpoints(checkpoints) if is_complete_checkpoint(p)), default=0)


def history(state_file: Path) -> dict[str, float]:
    """Each step's logged loss and mean reward, keyed "loss@N" / "reward@N"."""
    entries = json.loads(state_file.read_text())["log_history"]
    return {f"{name}@{e['step']}": e[name] for e in entries if "loss" in e for name in ("loss", "reward")}


def test_fourdrl_interrupted_and_killed_resumes_to_the_uninterrupted_weights(tiny_latent, tmp_path):
    data = write_demo_rl_data(tmp_path / "rl", num_samples=4, num_frames=2, size=56)
    (tmp_path / "rl_reward.py").write_text(REWARD)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    out = tmp_path / "out"
    whole = start(rl_argv(tiny_latent, data, out, "whole"), env, tmp_path / "whole.stderr")
    assert whole.wait(timeout=300) == 0, (tmp_path / "whole.stderr").read_text()[-3000:]

    rng = random.Random(SEED)
    checkpoints = out / "faulty" / "checkpoints"
    argv = rl_argv(tiny_latent, data, out, "faulty")

    # Ctrl-C once a checkpoint is complete: exit 130, one line, the checkpoints kept.
    stderr_path = tmp_path / "sigint.stderr"
    proc = start(argv, env, stderr_path)
    target = rng.randint(1, STEPS - 2)
    assert wait_for(proc, lambda: newest_complete_step(checkpoints) >= target, interval=0.01), \
        stderr_path.read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    stderr = stderr_path.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.rstrip("\n").splitlines()[-1] == (
        f"python -m fourdrl.train: interrupted: checkpoints written so far are kept in {checkpoints}; rerun the "
        "same command to resume from the newest")
    kept = newest_complete_step(checkpoints)
    assert kept >= target

    # SIGKILL: while a later checkpoint is being written if the poll catches one, else right after.
    stderr_path = tmp_path / "sigkill.stderr"
    proc = start(argv, env, stderr_path)

    def saving() -> bool:
        return any(checkpoint_step(p) > kept and not is_complete_checkpoint(p) for p in step_checkpoints(checkpoints))

    caught = wait_for(proc, saving, interval=0.002)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert caught or proc.returncode == 0, stderr_path.read_text()[-3000:]

    # The same command again finishes the run.
    stderr_path = tmp_path / "final.stderr"
    proc = start(argv, env, stderr_path)
    assert proc.wait(timeout=300) == 0, stderr_path.read_text()[-3000:]
    log_text = (out / "faulty" / "logs" / "train.log").read_text()
    assert log_text.count("resuming from") >= 2

    reference = load_file(out / "whole" / "checkpoints" / "model.safetensors")
    resumed = load_file(checkpoints / "model.safetensors")
    difference = max(float((reference[k].double() - resumed[k].double()).abs().max()) for k in reference)
    print(f"Ctrl-C after checkpoint {kept}, SIGKILL {'during a save' if caught else 'after it'}; "
          f"max weight difference vs uninterrupted: {difference:.3g}")
    assert difference <= 1e-6
    expected = history(out / "whole" / "checkpoints" / "trainer_state.json")
    assert sorted(expected) == sorted(f"{n}@{s}" for n in ("loss", "reward") for s in range(1, STEPS + 1))
    assert history(checkpoints / "trainer_state.json") == pytest.approx(expected, rel=1e-6)
