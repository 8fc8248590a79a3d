"""The demo's final table (scripts/demo_report.py): each key figure is measured from stage output files
built here (trainer_state.json, summaries, results, answers, a real tiny checkpoint), and a missing
or broken output gives "n/a (why)" or a one-line error, never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.metrics import aggregate
from scripts import demo_report as R

ROOT = Path(__file__).resolve().parent.parent


def _jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _trainer_state(folder: Path, history: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 6, "log_history": history}))
    return folder


DIFT_HISTORY = [  # as dift.trainer logs: its own metrics every logging step, HF's loss, then the run summary
    {"step": 0, "total_loss": 1.63, "ce_loss": 11.95, "cos_similarity": 0.566, "sim_loss": 0.434},
    {"step": 2, "loss": 1.588, "grad_norm": 5.4, "learning_rate": 0.003},
    {"step": 2, "total_loss": 1.38, "ce_loss": 9.5, "cos_similarity": 0.80},
    {"step": 4, "total_loss": 1.26, "ce_loss": 7.25, "cos_similarity": 0.9064},
    {"step": 6, "loss": 1.269, "grad_norm": 0.41},
    {"step": 6, "train_loss": 1.41, "train_runtime": 14.2},
]

RL_HISTORY = [
    {"step": 1, "reward": 0.25, "kl": 0.0, "replay/max_abs_logprob_diff": 1.9e-06, "completions/latent_blocks_mean": 0},
    {"step": 2, "reward": 0.125, "kl": 2.258e-05, "replay/max_abs_logprob_diff": 3.5e-06,
     "completions/latent_blocks_mean": 0.5, "completions/clipped_ratio": 0.75},
    {"step": 2, "train_runtime": 87.0, "train_loss": 1e-07},
]


def _results(folder: Path) -> Path:
    """A results file of 4 questions (gt A A A B; two outputs with a letter, one inside <answer>)
    and the summaries next to it, built by the evaluation's own aggregate()."""
    rows = [("A", "A", "<think>x</think><answer>A</answer>"), ("A", "", "assistantassistant"),
            ("A", "B", "Based on it"), ("B", "", "")]
    records = [{"index": i, "gt": gt, "pred": pred, "raw": raw, "hit": int(pred == gt), "subtask_type": "abs_dir",
                "num_options": 4} for i, (gt, pred, raw) in enumerate(rows)]
    results = _jsonl(folder / "dsr_eval_demo.jsonl", records)
    (folder / "dsr_eval_demo_summary.json").write_text(json.dumps(aggregate(records, total=6, skipped=2)))
    rescored = [dict(r, hit=1) for r in records[:2]] + records[2:]
    (folder / "dsr_eval_demo_rescored_summary.json").write_text(json.dumps(aggregate(rescored)))
    return results


def _stage_outputs(tmp_path: Path, tiny_base: Path) -> dict[str, Path]:
    engine = tmp_path / "engine"
    _jsonl(engine / "dift_data.jsonl", [{"id": i} for i in range(5)])
    _jsonl(engine / "rl_data.jsonl", [{"id": i} for i in range(3)])
    _jsonl(engine / "clips.jsonl", [{"clip": i} for i in range(2)])
    inference = tmp_path / "inference"
    inference.mkdir()
    (inference / "answer_sampled.txt").write_text("<think>hmm</think><answer>B</answer>\nAnswer: B\n")
    (inference / "answer_greedy.txt").write_text("assistantassistant\nAnswer: (none)\n")
    os.utime(inference / "answer_sampled.txt", (100, 100))  # written first, as 30_inference.sh does
    return {"checkpoint": tiny_base, "data_engine": engine,
            "dift": _trainer_state(tmp_path / "dift", DIFT_HISTORY),
            "fourdrl": _trainer_state(tmp_path / "rl", RL_HISTORY), "inference": inference,
            "evaluation": _results(tmp_path / "eval")}


def _table(log: Path, capsys) -> list[list[str]]:
    assert R.main(["table", "--log", str(log)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [cell.strip() for cell in lines[0].strip("|").split("|")] == ["stage", "seconds", "key figure", "output"]
    assert set(lines[1]) == {"|", "-"}
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_the_table_measures_every_stage_from_its_outputs(tmp_path, tiny_base, capsys):
    from safetensors import safe_open

    outputs = _stage_outputs(tmp_path, tiny_base)
    log = tmp_path / "demo_stages.jsonl"
    t = 1000.0
    for kind, seconds in zip(R.FIGURES, (2, 30, 20, 90, 40, 70)):
        assert R.main(["record", "--log", str(log), "--kind", kind, "--start", str(t), "--end", str(t + seconds),
                       "--output", str(outputs[kind])]) == 0
        t += seconds + 0.5
    rows = _table(log, capsys)
    assert [r[0] for r in rows] == ["1. tiny checkpoint", "2. data engine", "3. DIFT", "4. 4DRL", "5. inference",
                                    "6. evaluation", "total"]
    assert [r[1] for r in rows] == ["2.0", "30.0", "20.0", "90.0", "40.0", "70.0", "254.5"]
    assert [r[3] for r in rows[:-1]] == [str(outputs[k]) for k in R.FIGURES]

    with safe_open(str(tiny_base / "model.safetensors"), "pt") as f:
        params = sum(f.get_tensor(name).numel() for name in f.keys())
    config = json.loads((tiny_base / "config.json").read_text())
    text = config.get("text_config", config)
    assert rows[0][2] == (f"{params / 1e6:.2f}M params (random), {text['num_hidden_layers']} layers, "
                          f"hidden {text['hidden_size']}")
    assert rows[1][2] == "5 DIFT + 3 RL records from 2 clips"
    # HF's loss over the steps it was logged (2 and 6), the trainer's CE and latent cosine (0 to 4)
    assert rows[2][2] == "loss 1.588 -> 1.269, ce 11.95 -> 7.25, latent cos 0.566 -> 0.9064 (steps 0-6)"
    assert rows[3][2] == ("step 2: reward 0.125, kl 2.258e-05, replay max diff 3.5e-06, latent blocks 0.5, "
                          "clipped 75.0%")
    assert rows[4][2] == "sampled: B (in <answer>, 36 chars), greedy: (none) (no <answer>, 18 chars)"
    # 1/4 right; chance 25%, always 'A' 3/4; letters in 2 outputs, one <answer> tag; rescored 2/4
    assert rows[5][2] == ("acc 25.0% (1/4) [chance 25.0%, always 'A' 75.0%]; letter in 2/4, <answer> in 1/4; "
                          "rescored 50.0%")


def test_the_inference_answers_are_listed_in_the_order_written(tmp_path):
    folder = tmp_path / "inference"
    folder.mkdir()
    for name, stamp in (("zeta", 100), ("alpha", 200)):
        (folder / f"answer_{name}.txt").write_text(f"text of {name}\nAnswer: C\n")
        os.utime(folder / f"answer_{name}.txt", (stamp, stamp))
    assert R.key_figure("inference", folder) == "zeta: C (no <answer>, 12 chars), alpha: C (no <answer>, 13 chars)"


@pytest.mark.parametrize("kind, expected", [
    ("checkpoint", "n/a (missing *.safetensors)"),
    ("data_engine", "n/a (missing dift_data.jsonl)"),
    ("dift", "n/a (missing trainer_state.json)"),
    ("fourdrl", "n/a (missing trainer_state.json)"),
    ("inference", "n/a (missing answer_*.txt)"),
    ("evaluation", "n/a (missing results_summary.json)"),
])
def test_a_stage_without_outputs_reads_n_a(tmp_path, kind, expected):
    assert R.key_figure(kind, tmp_path / ("results.jsonl" if kind == "evaluation" else "")) == expected


def test_broken_outputs_read_n_a_with_the_reason(tmp_path):
    dift = tmp_path / "dift"
    dift.mkdir()
    (dift / "trainer_state.json").write_text('{"log_history": [')
    assert R.key_figure("dift", dift) == "n/a (bad JSON in trainer_state.json)"
    _trainer_state(dift, [{"step": 1, "grad_norm": 1.0}])
    assert R.key_figure("dift", dift) == "n/a (no loss logged in trainer_state.json)"
    assert R.key_figure("fourdrl", dift) == "n/a (no reward logged in trainer_state.json)"
    (dift / "trainer_state.json").write_text('{"log_history": 3}')
    assert R.key_figure("dift", dift) == "n/a (trainer_state.json has no log_history)"

    engine = tmp_path / "engine"
    _jsonl(engine / "dift_data.jsonl", [{}])
    _jsonl(engine / "rl_data.jsonl", [{}])
    assert R.key_figure("data_engine", engine) == "n/a (missing clips.jsonl)"
    (engine / "clips" / "c0").mkdir(parents=True)
    assert R.key_figure("data_engine", engine) == "1 DIFT + 1 RL records from 1 clips"

    inference = tmp_path / "inference"
    inference.mkdir()
    (inference / "answer_greedy.txt").write_text("the run stopped before its answer\n")
    assert R.key_figure("inference", inference) == "n/a (answer_greedy.txt has no 'Answer:' line)"

    results = _results(tmp_path / "eval")
    results.write_text(results.read_text() + "{torn\n")
    assert R.key_figure("evaluation", results) == "n/a (dsr_eval_demo.jsonl:5: bad JSON)"
    (tmp_path / "eval" / "dsr_eval_demo_summary.json").write_text('{"correct": 1}')
    assert R.key_figure("evaluation", results) == "n/a (summary has no accuracy)"

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\x10")
    assert R.key_figure("checkpoint", ckpt) == "n/a (bad safetensors header in model.safetensors)"


def test_a_failed_stage_is_marked_and_the_total_still_printed(tmp_path, capsys, monkeypatch):
    log = tmp_path / "log.jsonl"
    engine = tmp_path / "demo" / "engine"
    R.append_record(log, "data_engine", "10,25", "12,75", str(engine), status="failed (exit 1)")  # a comma locale
    monkeypatch.chdir(tmp_path)
    rows = _table(log, capsys)
    assert rows[0][:2] == ["1. data engine", "2.5"]
    assert rows[0][3] == "demo/engine"  # relative to the working folder, as demo.sh runs from the root
    assert rows[0][2] == "FAILED (EXIT 1); n/a (missing dift_data.jsonl)"
    assert rows[-1][:2] == ["total", "2.5"]


@pytest.mark.parametrize("content, message", [
    (None, "no stage log"),
    ("", "no stage recorded"),
    ('{"kind": "dift", "start": 1, "end": 2, "output": "x"}\nnot json\n', ":2: not a stage record"),
    ('{"kind": "dift", "start": "soon", "end": 2, "output": "x"}\n', ":1: not a stage record"),
])
def test_a_bad_log_is_one_line_without_traceback(tmp_path, content, message):
    log = tmp_path / "log.jsonl"
    if content is not None:
        log.write_text(content)
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_report.py"), "table", "--log", str(log)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1 and message in done.stderr and "Traceback" not in done.stderr


def test_a_time_stamp_that_is_not_a_number_is_one_line(tmp_path, capsys):
    assert R.main(["record", "--log", str(tmp_path / "l"), "--kind", "dift", "--start", "x", "--end", "1",
                   "--output", "o"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("demo_report: ") and err.count("\n") == 1


def test_demo_sh_records_every_stage_kind_and_calls_existing_stages():
    """The demo's stages are the report's kinds, in the report's order, and every stage script exists."""
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    kinds = re.findall(r"^run_stage (\w+) ", demo, flags=re.M)
    assert kinds == list(R.FIGURES)
    for script in re.findall(r"scripts/demo_stages/\w+\.sh", demo):
        assert (ROOT / script).is_file(), script
    assert "25_fourdrl.sh" in demo


@pytest.mark.parametrize("var, value", [("DEMO_CLIPS", "0"), ("EVAL_MAX_NEW_TOKENS", "many")])
def test_demo_sh_refuses_a_bad_scale_before_running_anything(tmp_path, var, value):
    env = {**os.environ, "DEMO_SETUP": "0", "DEMO_DIR": str(tmp_path / "demo"), var: value}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, env=env)
    assert done.returncode == 2
    assert done.stderr == f"demo.sh: {var} must be a positive integer, got '{value}'\n"
    assert not (tmp_path / "demo").exists()
