"""evaluation/batch_dsr_eval.sh: one run per entry, latent size from the experiment name, waits for
all runs and fails when one fails."""

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
    done = subprocess.run(["bash", "evaluation/batch_dsr_eval.sh", "0 exp_latent2:7", "1 no_such_exp", "",
                           "2 PLACEHOLDER_exp", "--", "--max_samples", "2", "--greedy", "--num_workers", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAILED  no_such_exp" in done.stderr and "no such checkpoint folder" in done.stderr
    assert "PLACEHOLDER" not in done.stdout + done.stderr
    assert sorted(p.name for p in results.iterdir()) == ["exp_latent2-7", "no_such_exp"]

    (summary_file,) = (results / "exp_latent2-7").glob("dsr_eval_*_summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["latent_size"] == 2 and summary["eval_count"] == 2  # from "latent2" in the name
    assert summary["sampling"]["max_new_tokens"] == 4
    assert summary["model_path"] == str((models / "exp_latent2/checkpoints/checkpoint-7").resolve())
    assert len(list((results / "exp_latent2-7").glob("dsr_eval_*.log"))) == 1
    assert len(list((results / "no_such_exp").glob("dsr_eval_*.log"))) == 1
