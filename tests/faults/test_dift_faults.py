"""Fault injection for DIFT training: a real `python -m dift.train` is stopped by SIGKILL and by
SIGINT (Ctrl-C) at seeded random moments (a random step plus a random delay, or the middle of a
checkpoint save), then rerun with `--resume_from_checkpoint true`, until one run finishes. The
final weights and every step's loss must equal an uninterrupted run's; each Ctrl-C must exit 130
with one line naming the checkpoint kept, and no traceback."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dift.core.training_checkpoint import checkpoint_step, newest_complete_checkpoint, step_checkpoints
from scripts.make_demo_dift_data import write_demo_data

pytestmark = pytest.mark.faults

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_STEPS = 6, 2
SEED = 20261205
# One thread per process: the same float reductions in every run (and no oversubscribed cores).
# FOURDTHINKER_PROGRESS: the progress bar also into the stderr file (not a terminal): the test reads
# the step from it.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "FOURDTHINKER_PROGRESS": "1"}


def train_argv(model: Path, data: Path, out: Path, exp: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dift.train", "--exp_name", exp, "--model", str(model), "--data_path", str(data),
            "--output_dir", str(out), "--max_steps", str(STEPS), "--save_steps", str(SAVE_STEPS),
            "--warmup_steps", "0", "--learning_rate", "1e-3", "--logging_steps", "1",
            "--no_gradient_checkpointing", *extra]


class Attempt:
    """One `python -m dift.train` process, its stderr kept in a file that the test reads while it runs."""

    def __init__(self, argv: list[str], stderr_path: Path):
        self.stderr_path = stderr_path
        with open(stderr_path, "w") as stderr:
            self.process = subprocess.Popen(argv, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stderr_tail(self, size: int = 4096) -> str:
        with open(self.stderr_path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - size))
            return fh.read().decode(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until(self, condition, interval: float, timeout: float = 240.0) -> bool:
        """Poll `condition` until it holds (True) or the process has exited (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            if not self.running():
                return False
            time.sleep(interval)
        raise TimeoutError(f"condition not reached in {timeout}s; stderr:\n{self.stderr[-3000:]}")

    def step(self) -> int:
        """The step the progress bar shows."""
        found = re.findall(rf"(\d+)/{STEPS} \[", self.stderr_tail())
        return int(found[-1]) if found else 0

    def finish(self, timeout: float = 240.0) -> int:
        return self.process.wait(timeout=timeout)


def newest_write(folder: Path) -> float:
    """The latest modification time of the folder's files (0 if it vanished while being read)."""
    try:
        return max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
    except FileNotFoundError:
        return 0.0


def saving_after(checkpoints: Path, step: int, since: float):
    """True while a checkpoint folder newer than `step` is being written: files written after
    `since` and no completion marker yet (a torn folder left by an earlier fault does not count
    until this run writes into it again)."""
    def condition() -> bool:
        _, incomplete = newest_complete_checkpoint(checkpoints)
        return any(checkpoint_step(p) > step and newest_write(p) > since for p in incomplete)
    return condition


def losses(state_file: Path) -> dict[int, float]:
    history = json.loads(state_file.read_text())["log_history"]
    return {e["step"]: e["total_loss"] for e in history if "total_loss" in e}


def test_dift_killed_and_interrupted_at_random_moments_resumes_to_the_uninterrupted_weights(tiny_base, tmp_path):
    data = write_demo_data(tmp_path / "data", num_samples=4, seed=0, num_frames=2, size=56)
    out = tmp_path / "out"
    reference = Attempt(train_argv(tiny_base, data, out, "whole"), tmp_path / "whole.stderr")
    assert reference.finish() == 0, reference.stderr[-3000:]

    checkpoints = out / "faulty" / "checkpoints"
    rng = random.Random(SEED)
    # Two of each signal; one of each lands in a checkpoint save, one after a random step and delay.
    faults = [(signal.SIGKILL, "save"), (signal.SIGINT, "step"), (signal.SIGKILL, "step"), (signal.SIGINT, "save")]
    rng.shuffle(faults)
    landed, torn_saves = [], 0
    for n, (sig, moment) in enumerate(faults):
        newest, _ = newest_complete_checkpoint(checkpoints)
        start = checkpoint_step(newest) if newest else 0
        started = time.time()
        attempt = Attempt(train_argv(tiny_base, data, out, "faulty", "--resume_from_checkpoint", "true"),
                          tmp_path / f"faulty-{n}.stderr")
        if not attempt.wait_until(lambda a=attempt: "dift.train: DIFT faulty" in a.stderr, interval=0.05):
            pytest.fail(f"attempt {n} ended before training:\n{attempt.stderr[-3000:]}")
        if moment == "save":
            reached = attempt.wait_until(saving_after(checkpoints, start, started), interval=0.002)
        else:
            target = rng.randint(start + 1, STEPS - 1)
            reached = attempt.wait_until(lambda a=attempt, t=target: a.step() >= t, interval=0.01)
            time.sleep(rng.uniform(0.0, 0.3))
        if not reached or not attempt.running():
            break  # it finished first: the remaining faults have nothing left to stop
        attempt.process.send_signal(sig)
        code = attempt.finish()
        landed.append((sig.name, moment, attempt.step()))
        kept, incomplete = newest_complete_checkpoint(checkpoints)
        torn_saves += bool(incomplete)
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
            continue
        # Ctrl-C: exit 130, no traceback, and the last line names what was kept and how to go on.
        stderr = attempt.stderr
        assert code == 130, stderr[-3000:]
        assert "Traceback" not in stderr, stderr[-3000:]
        last_line = stderr.rstrip("\n").splitlines()[-1]
        if kept is None:
            assert last_line.startswith("python -m dift.train: interrupted: before the first complete checkpoint"), \
                last_line
        else:
            assert last_line == (f"python -m dift.train: interrupted: kept {kept} (step {checkpoint_step(kept)}); "
                                 "to continue, rerun the same command with --resume_from_checkpoint true")

    assert len(landed) >= 3, f"too few faults landed before the run finished: {landed}"
    assert torn_saves >= 1, "no fault left a half-written checkpoint: the skip was not exercised"
    final = Attempt(train_argv(tiny_base, data, out, "faulty", "--resume_from_checkpoint", "true"),
                    tmp_path / "final.stderr")
    assert final.finish() == 0, final.stderr[-3000:]
    log_text = (out / "faulty" / "log.txt").read_text()
    assert "is incomplete (no checkpoint_complete.json" in log_text and "missing keys" not in log_text
    assert all(checkpoint_step(p) == STEPS for p in step_checkpoints(checkpoints))  # older ones rotated away

    whole, faulty = load_file(out / "whole" / "checkpoints" / "model.safetensors"), load_file(
        checkpoints / "model.safetensors")
    assert whole.keys() == faulty.keys()
    difference = max(float((whole[k].double() - faulty[k].double()).abs().max()) for k in whole)
    print(f"faults landed (signal, moment, step): {landed}; torn saves: {torn_saves}; "
          f"max weight difference vs uninterrupted: {difference:.3g}")
    assert difference <= 1e-6
    reference_losses = losses(out / "whole" / "checkpoints" / "trainer_state.json")
    assert sorted(reference_losses) == list(range(STEPS))
    assert losses(checkpoints / "trainer_state.json") == pytest.approx(reference_losses, rel=1e-6)
