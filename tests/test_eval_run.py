"""The evaluation CLI end to end on the tiny checkpoint and a synthetic benchmark: outputs as the
spec says, skipped videos counted, batch size / resume after SIGKILL / 2-process data parallel all
give the same results file as one uninterrupted run, rescoring reproduces the summary.

Decoding is greedy with a strong repetition penalty, so the random model's answers differ from
question to question (plain greedy repeats one token for every prompt, which would make the
equality tests blind).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dift.core.checkpoint import load_latent_model
from dift.core.cli import UsageError
from dift.core.extraction import extract_answer
from dift.core.generation import SamplingConfig
from evaluation import dsr_eval, evaluate, rescore
from evaluation.benchmark import load_benchmark
from evaluation.metrics import aggregate
from evaluation.results import RESULT_FIELDS, read_results, summary_path
from scripts.make_demo_benchmark import build_benchmark

ROOT = Path(__file__).resolve().parent.parent
RUN_ONLY = ("results_file", "world_size")  # summary fields that name the run, not its results


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_latent):
    """13 questions over 7 videos; video 5 is corrupt, video 6 missing: questions 5, 12 (corrupt)
    and 6 (missing) are skipped."""
    root = tmp_path_factory.mktemp("eval")
    bench = build_benchmark(root / "bench", per_type=1, frames=8, fps=4, size=56, missing=1, corrupt=1)
    return {"root": root, "bench": bench, "model": tiny_latent, "frames": root / "frame_cache"}


def eval_argv(setup, output, *extra):
    return ["--model_path", str(setup["model"]), "--benchmark_path", str(setup["bench"] / "benchmark.parquet"),
            "--video_root", str(setup["bench"] / "videos"), "--frame_root", str(setup["frames"]),
            "--output_file", str(output), "--greedy", "--repetition_penalty", "3", "--max_new_tokens", "8",
            "--num_workers", "2", *extra]


@pytest.fixture(scope="module")
def reference(setup):
    """One uninterrupted single-process run (batch size 4)."""
    output = setup["root"] / "reference.jsonl"
    summary = dsr_eval.main(eval_argv(setup, output, "--batch_size", "4"))
    return {"output": output, "text": output.read_text(), "summary": summary}


def without_run_fields(summary):
    return {k: v for k, v in summary.items() if k not in RUN_ONLY}


def test_outputs_follow_the_spec(setup, reference):
    records = read_results(reference["output"])
    items = {it.index: it for it in load_benchmark(setup["bench"] / "benchmark.parquet")}
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11]  # file order, skips left out
    for r in records:
        assert list(r)[:len(RESULT_FIELDS)] == list(RESULT_FIELDS)
        item = items[r["index"]]
        assert r["question"] == item.question_text and "<think>" not in r["question"]  # no suffix
        assert r["video_path"] == str(setup["bench"] / "videos" / f"{item.video_id}.mp4")
        assert (r["gt"], r["subtask_type"]) == (item.gt, item.subtask_type)
        assert r["pred"] == r["answer"] == extract_answer(r["raw"])
        assert r["hit"] == int(r["pred"] == r["gt"]) and r["error"] is False
    assert len({r["raw"] for r in records}) > 5  # answers differ between questions
    summary = reference["summary"]
    assert json.loads(summary_path(reference["output"]).read_text()) == summary
    assert (summary["total"], summary["eval_count"], summary["skipped"]) == (13, 10, 3)
    assert summary["skipped_by_reason"] == {"decode_failed": 2, "missing_video": 1}
    assert summary["latent_ablation"] == "none" and summary["world_size"] == 1
    # top_k from the checkpoint's generation_config.json (Qwen2.5-VL's 1), the penalty from the flag.
    assert summary["sampling"] == {"max_new_tokens": 8, "do_sample": False, "temperature": 0.7, "top_p": 0.9,
                                   "top_k": 1, "repetition_penalty": 3.0}
    assert summary["sampling_sources"] == {"top_k": str(setup["model"] / "generation_config.json"),
                                           "repetition_penalty": "command line"}
    expected = aggregate(records, total=13, skipped=3)
    assert {k: summary[k] for k in expected} == expected


def test_batch_size_does_not_change_results(setup, reference):
    output = setup["root"] / "bs1.jsonl"
    summary = dsr_eval.main(eval_argv(setup, output, "--batch_size", "1", "--num_workers", "0"))
    assert output.read_text() == reference["text"]
    assert without_run_fields(summary) == without_run_fields(reference["summary"])


def test_reference_loop_gives_the_engines_results(setup, reference):
    """--no_engine (the reference loop, batch by batch) writes what the engine (the default: continuous
    batching over chunks of batches) wrote."""
    output = setup["root"] / "no_engine.jsonl"
    summary = dsr_eval.main(eval_argv(setup, output, "--batch_size", "3", "--no_engine"))
    assert output.read_text() == reference["text"]
    assert without_run_fields(summary) == without_run_fields(reference["summary"])


def test_rerun_is_a_noop_and_other_settings_are_refused(setup, reference, tmp_path):
    output = tmp_path / "again.jsonl"
    output.write_text(reference["text"])
    summary = dsr_eval.main(eval_argv(setup, output, "--batch_size", "4"))  # everything done: nothing to do
    assert output.read_text() == reference["text"]
    assert without_run_fields(summary) == without_run_fields(reference["summary"])
    with pytest.raises(UsageError, match="latent_ablation='none'"):
        dsr_eval.main(eval_argv(setup, output, "--latent_ablation", "zero"))


def test_resume_after_sigkill_equals_uninterrupted(setup, reference):
    output = setup["root"] / "killed.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "evaluation.dsr_eval",
                             *eval_argv(setup, output, "--batch_size", "2")],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if output.is_file() and output.read_text().count("\n") >= 2:  # the first batch is on disk
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    lines = output.read_text().count("\n")
    assert 2 <= lines < 10
    with output.open("a") as f:  # as if killed in the middle of writing a line
        f.write('{"index": 99, "video_id": "synth_00')

    summary = dsr_eval.main(eval_argv(setup, output, "--batch_size", "2"))
    assert output.read_text() == reference["text"]
    indices = [r["index"] for r in read_results(output)]
    assert len(indices) == len(set(indices))
    assert without_run_fields(summary) == without_run_fields(reference["summary"])


def test_data_parallel_equals_single_process(setup, reference):
    output = setup["root"] / "dp.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    torchrun = Path(sys.executable).with_name("torchrun")
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "evaluation.dsr_eval",
                           *eval_argv(setup, output, "--batch_size", "2")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert output.read_text() == reference["text"]
    assert not list(output.parent.glob("dp.part*"))  # folded into the results file
    summary = json.loads(summary_path(output).read_text())
    assert summary["world_size"] == 2
    assert without_run_fields(summary) == without_run_fields(reference["summary"])  # skip reasons of both ranks


def test_rescore_reproduces_run_summary(reference, tmp_path):
    summary = rescore.rescore_file(reference["output"], tmp_path / "s.json", tmp_path / "r.jsonl")
    expected = reference["summary"]
    assert {k: summary[k] for k in ("total", "eval_count", "skipped", "correct", "accuracy", "subtask_accuracy",
                                    "subtask_correct", "subtask_total", "subtask_macro_avg",
                                    "subtask_columns_order")} == \
           {k: expected[k] for k in ("total", "eval_count", "skipped", "correct", "accuracy", "subtask_accuracy",
                                     "subtask_correct", "subtask_total", "subtask_macro_avg",
                                     "subtask_columns_order")}
    assert (tmp_path / "r.jsonl").read_text() == reference["text"]  # same rule, same lines


def test_failed_question_is_recorded_and_the_rest_answered(setup):
    """A batch whose inference raises is retried question by question; the failing question is
    recorded with its message, empty prediction and hit 0 (an empty frame list fails in the processor)."""
    loaded = load_latent_model(setup["model"], dtype="float32", device="cpu")
    items = load_benchmark(setup["bench"] / "benchmark.parquet", max_samples=2)
    args = dsr_eval.parse_args(eval_argv(setup, setup["root"] / "unused.jsonl"))
    frames = evaluate.prepare_frames(items[0], args.video_root, evaluate.FrameCache(args.frame_root))
    records = evaluate.answer_batch(loaded, [(items[0], frames), (items[1], [])], args,
                                    SamplingConfig(max_new_tokens=4, do_sample=False))
    assert [r["index"] for r in records] == [0, 1]
    assert records[0]["error"] is False and records[0]["num_tokens"] == 4
    assert records[1]["error"] is True and "no frames" in records[1]["raw"]
    assert (records[1]["pred"], records[1]["hit"]) == ("", 0)


def test_latent_ablation_is_recorded(setup, tmp_path):
    summary = dsr_eval.main(eval_argv(setup, tmp_path / "noise.jsonl", "--latent_ablation", "noise",
                                      "--max_samples", "2"))
    assert summary["latent_ablation"] == "noise" and summary["eval_count"] == 2 and summary["total"] == 2


def test_prepare_frames_skip_reasons(setup, tmp_path):
    """The questions the original skips: no video id, missing video, undecodable video."""
    items = load_benchmark(setup["bench"] / "benchmark.parquet")
    cache = evaluate.FrameCache(tmp_path / "frames")
    videos = str(setup["bench"] / "videos")
    assert len(evaluate.prepare_frames(items[0], videos, cache)) == 2  # 8 frames at 4 fps: 2 at 1 fps
    no_id = dataclasses.replace(items[0], video_id=None)
    for item, reason in [(no_id, "no_video_id"), (items[6], "missing_video"), (items[5], "decode_failed")]:
        with pytest.raises(evaluate.SkipQuestion) as info:
            evaluate.prepare_frames(item, videos, cache)
        assert info.value.reason == reason


def test_default_decoding_is_the_checkpoints_generation_config(setup, tiny_latent_untied, tmp_path):
    """Like the original, a default run takes top_k 1 and repetition penalty 1.05 from the checkpoint's
    generation_config.json: greedy with the penalty, whatever --temperature/--top_p say."""
    model = tiny_latent_untied
    assert json.loads((model / "generation_config.json").read_text())["top_k"] == 1

    def run(name, *flags):
        argv = ["--model_path", str(model), "--benchmark_path", str(setup["bench"] / "benchmark.parquet"),
                "--video_root", str(setup["bench"] / "videos"), "--frame_root", str(setup["frames"]),
                "--output_file", str(tmp_path / f"{name}.jsonl"), "--max_new_tokens", "12", "--batch_size", "4",
                "--num_workers", "0", *flags]
        summary = dsr_eval.main(argv)
        return [r["raw"] for r in read_results(tmp_path / f"{name}.jsonl")], summary

    default, summary = run("default")
    explicit, _ = run("explicit", "--greedy", "--repetition_penalty", "1.05", "--generation_config", "flags")
    sampled, sampled_summary = run("sampled", "--generation_config", "flags")
    assert default == explicit
    assert len(set(default)) > 3  # the untied head's answers differ between questions
    assert sampled != default  # true sampling (top_k off, no penalty) decodes otherwise
    run_json = json.loads((tmp_path / "default_run.json").read_text())
    assert run_json["sampling"] == summary["sampling"] == {
        "max_new_tokens": 12, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 1,
        "repetition_penalty": 1.05}
    assert set(run_json["sampling_sources"].values()) == {str(model / "generation_config.json")}
    assert sampled_summary["sampling"]["top_k"] == 0 and sampled_summary["sampling"]["repetition_penalty"] == 1.0
