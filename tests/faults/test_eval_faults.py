"""Fault injection for the DSR evaluation: SIGKILL and SIGINT at seeded random moments of a real
`python -m evaluation.dsr_eval` process, then a rerun of the same command; the final results file and
summary must equal an uninterrupted run's, with no lost or duplicated rows. Ctrl-C must exit 130 with
one line saying what was kept and how to resume (no traceback)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evaluation import dsr_eval
from evaluation.results import read_results
from scripts.make_demo_benchmark import build_benchmark

pytestmark = pytest.mark.faults
ROOT = Path(__file__).resolve().parents[2]
RUN_ONLY = ("results_file", "world_size")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_latent_untied):
    root = tmp_path_factory.mktemp("eval-faults")
    bench = build_benchmark(root / "bench", per_type=1, frames=8, fps=4, size=56, missing=1, corrupt=0)
    return {"root": root, "bench": bench, "model": tiny_latent_untied, "frames": root / "frame_cache"}


def argv(setup, output):
    return ["--model_path", str(setup["model"]), "--benchmark_path", str(setup["bench"] / "benchmark.parquet"),
            "--video_root", str(setup["bench"] / "videos"), "--frame_root", str(setup["frames"]),
            "--output_file", str(output), "--max_new_tokens", "10", "--batch_size", "2", "--num_workers", "1"]


@pytest.fixture(scope="module")
def reference(setup):
    output = setup["root"] / "reference.jsonl"
    summary = dsr_eval.main(argv(setup, output))
    return {"text": output.read_text(), "summary": summary}


def strip_run(summary):
    return {k: v for k, v in summary.items() if k not in RUN_ONLY}


@pytest.mark.parametrize("seed, sig", [(1, signal.SIGKILL), (2, signal.SIGINT), (3, signal.SIGKILL),
                                       (4, signal.SIGINT)])
def test_interrupted_then_resumed_equals_uninterrupted(setup, reference, tmp_path, seed, sig):
    output = tmp_path / "run.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A seeded moment inside the work: after `lines` results are on disk, plus a fraction of a batch.
    rng = random.Random(seed)
    total = reference["text"].count("\n")
    lines, extra = rng.randrange(0, total - 1), rng.uniform(0.0, 0.4)
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.dsr_eval", *argv(setup, output)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            if output.is_file() and output.read_text().count("\n") >= lines:
                break
            time.sleep(0.02)
        time.sleep(extra)
        assert proc.poll() is None, "the run ended before the chosen moment"
        written = output.read_text().count("\n") if output.is_file() else 0
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert written < total  # interrupted with work left
    if sig == signal.SIGINT:
        assert proc.returncode == 130, stderr[-2000:]
        assert "Traceback" not in stderr
        last = stderr.strip().splitlines()[-1]
        assert last.startswith("python -m evaluation.dsr_eval: interrupted:") and "rerun the same command" in last
    summary = dsr_eval.main(argv(setup, output))  # the same command again: resume
    assert output.read_text() == reference["text"]
    indices = [r["index"] for r in read_results(output)]
    assert len(indices) == len(set(indices))
    assert strip_run(summary) == strip_run(reference["summary"])
