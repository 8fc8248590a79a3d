"""evaluation/batch_dsr_eval.sh: one run per entry, latent size from the experiment name, waits for
all runs and fails when one fails; rerunning the same command resumes each run in the same files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from scripts.make_demo_benchmark import build_benchmark

ROOT = Path(__file__).resolve().parent.parent


def test_launcher_runs_entries_and_reports_failures(tmp_path, tiny_latent):
    bench = build_benchmark(tmp_path / "bench", per_type=1, frames=4, size=56)
    models = tmp_path / "model"
    (models / "exp_latent2" / "checkpoints").mkdir(parents=True)
    (models / "exp_latent2" / "checkpoints" / "checkpoint-7").symlink_to(tiny_latent)
    results = tmp_path / "results"
    env = {"PATH": "/usr/bin:/bin", "MODEL_ROOT": str(models), "RESULTS_ROOT": str(results),
           "BENCHMARK_PATH": str(bench / "benchmark.parquet"), "VIDEO_ROOT": str(bench / "videos"),
           "MAX_NEW_TOKENS": "4", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "FOURDTHINKER_FRAME_CACHE": str(tmp_path / "frames")}
    command = ["bash", "evaluation/batch_dsr_eval.sh", "0 exp_latent2:7", "1 no_such_exp", "", "2 PLACEHOLDER_exp",
               "--", "--max_samples", "2", "--greedy", "--num_workers", "0"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED  no_such_exp" in done.stderr and "no such checkpoint folder" in done.stderr
    assert "PLACEHOLDER" not in done.stdout + done.stderr
    assert sorted(p.name for p in results.iterdir()) == ["exp_latent2-7", "no_such_exp"]

    run_dir = results / "exp_latent2-7"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "dsr_eval.jsonl", "dsr_eval.log", "dsr_eval_run.json", "dsr_eval_summary.json"]
    summary = json.loads((run_dir / "dsr_eval_summary.json").read_text())
    assert summary["latent_size"] == 2 and summary["eval_count"] == 2  # from "latent2" in the name
    assert summary["sampling"]["max_new_tokens"] == 4
    assert summary["model_path"] == str((models / "exp_latent2/checkpoints/checkpoint-7").resolve())
    assert sorted(p.name for p in (results / "no_such_exp").iterdir()) == ["dsr_eval.log"]

    # The same command again: the finished run resumes with nothing left to do, in the same files.
    answers = (run_dir / "dsr_eval.jsonl").read_text()
    again = subprocess.run(command[:3] + command[6:], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (run_dir / "dsr_eval.jsonl").read_text() == answers
    log = (run_dir / "dsr_eval.log").read_text()
    assert log.count("===== ") == 2 and "2 already done, 0 to evaluate" in log.split("===== ")[2]
