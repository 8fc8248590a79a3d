"""The results files: append + fsync, torn last lines, resuming sets, merging part files, and
rescoring a results file the test builds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import rescore
from evaluation.metrics import aggregate
from evaluation.results import (
    ResultsFileError,
    ResultsWriter,
    completed_indices,
    merge_results,
    part_path,
    read_results,
    results_path,
    summary_path,
)

ROOT = Path(__file__).resolve().parent.parent


def line(index, **extra):
    return {"index": index, "hit": 0, "subtask_type": "abs_dis", **extra}


def test_paths():
    assert results_path("out/run.json").as_posix() == "out/run.jsonl"
    assert results_path("out/run").as_posix() == "out/run.jsonl"
    assert summary_path("out/run.jsonl").as_posix() == "out/run_summary.json"
    assert part_path("out/run.jsonl", 0, 1).as_posix() == "out/run.jsonl"
    assert part_path("out/run.jsonl", 1, 4).as_posix() == "out/run.part1-of-4.jsonl"


def test_torn_last_line_is_dropped_and_redone(tmp_path):
    path = tmp_path / "r.jsonl"
    with ResultsWriter(path) as w:
        w.write_batch([line(0), line(1)])
    with path.open("a") as f:
        f.write('{"index": 2, "hit": 0, "subt')  # killed mid-write
    assert [r["index"] for r in read_results(path)] == [0, 1]
    assert completed_indices(path) == {0, 1}
    with ResultsWriter(path) as w:  # reopening cuts the torn line before appending
        w.write_batch([line(2)])
    assert path.read_text().count("\n") == 3
    assert [r["index"] for r in read_results(path)] == [0, 1, 2]


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(line(0)) + "\n" + json.dumps(line(1)))
    with ResultsWriter(path) as w:
        w.write_batch([line(2)])
    assert [r["index"] for r in read_results(path)] == [0, 1, 2]


def test_bad_line_in_the_middle_is_an_error(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(line(0)) + "\nnot json\n" + json.dumps(line(2)) + "\n")
    with pytest.raises(ResultsFileError, match=r"r.jsonl line 2: invalid JSON"):
        read_results(path)
    path.write_text(json.dumps({"no": "index"}) + "\n")
    with pytest.raises(ResultsFileError, match="line 1: not a results record"):
        read_results(path)


def test_merge_parts_in_index_order_first_wins(tmp_path):
    final = tmp_path / "r.jsonl"
    with ResultsWriter(final) as w:  # from an earlier run
        w.write_batch([line(0, raw="old0")])
    with ResultsWriter(part_path(final, 0, 2)) as w:
        w.write_batch([line(2), line(4)])
    with ResultsWriter(part_path(final, 1, 2)) as w:
        w.write_batch([line(1), line(3), line(0, raw="dup")])
    with ResultsWriter(part_path(final, 2, 3)) as w:  # a part of an interrupted run of another world size
        w.write_batch([line(5)])
    assert completed_indices(final) == {0, 1, 2, 3, 4, 5}
    records = merge_results(final)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert records[0]["raw"] == "old0"
    assert read_results(final) == records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl"]


def test_retried_errors_are_redone_and_win_the_merge(tmp_path):
    final = tmp_path / "r.jsonl"
    with ResultsWriter(final) as w:
        w.write_batch([line(0), line(1, error=True, raw="CUDA out of memory"), line(2, error=True, raw="boom")])
    assert completed_indices(final) == {0, 1, 2}
    assert completed_indices(final, retry_errors=True) == {0}
    with ResultsWriter(final) as w:  # the resumed run answers 1 and fails 2 again
        w.write_batch([line(1, error=False, raw="B"), line(2, error=True, raw="boom again")])
    records = merge_results(final)
    assert [(r["index"], r.get("raw")) for r in records] == [(0, None), (1, "B"), (2, "boom")]


def build_results(tmp_path):
    """A results file with known model texts, and the scores the rules give them."""
    rows = [  # (raw, gt, type, expected pred)
        ("<think>Based on it</think><answer>C</answer>", "C", "abs_dis", "C"),
        ("<answer>The answer is B</answer>", "A", "abs_dis", "B"),
        ("Based on the frames", "B", "rel_dir", "B"),
        ("Answer: the left one", "A", "rel_dir", ""),
        ("<answer> d </answer> D", "D", "non_temp", "D"),
        ("E", "E", "mystery", ""),  # letter outside A-D; unknown type: overall only
        ("CUDA out of memory. Tried to allocate 2 GiB", "C", "abs_ori", ""),  # an error line
    ]
    records = []
    for i, (raw, gt, kind, _) in enumerate(rows):
        records.append({"index": i, "video_id": f"v{i}", "video_path": f"/v/v{i}.mp4", "question": "Q", "gt": gt,
                        "pred": "Z", "answer": "Z", "raw": raw, "hit": 1, "subtask_type": kind,
                        "error": i == len(rows) - 1})
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path, [r[3] for r in rows], [int(bool(r[3]) and r[3] == r[1]) for r in rows], records


def test_rescore_reproduces_summary(tmp_path, capsys):
    path, preds, hits, records = build_results(tmp_path)
    summary = rescore.main([str(path)])
    rescored = read_results(tmp_path / "run_rescored.jsonl")
    assert [r["pred"] for r in rescored] == preds
    assert [r["answer"] for r in rescored] == preds
    assert [r["hit"] for r in rescored] == hits
    for before, after in zip(records, rescored):  # every other field kept
        assert {k: v for k, v in after.items() if k not in ("pred", "answer", "hit")} == \
               {k: v for k, v in before.items() if k not in ("pred", "answer", "hit")}
    expected = aggregate([{"hit": h, "subtask_type": r["subtask_type"], "gt": r["gt"]} for h, r in zip(hits, records)],
                         total=7, skipped=0)
    assert {k: summary[k] for k in expected} == expected
    assert summary["correct"] == 3 and summary["subtask_accuracy"]["Abs Dis"] == 0.5
    assert summary["subtask_accuracy"]["Abs Ori"] == 0.0  # the error line counts, as a miss
    assert json.loads((tmp_path / "run_rescored_summary.json").read_text()) == summary
    assert "Overall accuracy: 42.86% (3/7" in capsys.readouterr().out


def test_rescore_takes_totals_from_the_evaluation_summary(tmp_path):
    path, *_ = build_results(tmp_path)
    summary_path(path).write_text(json.dumps({"total": 10, "skipped": 3, "eval_count": 7}))
    out = rescore.rescore_file(path, tmp_path / "s.json", tmp_path / "o.jsonl", letters="ABCDEF")
    assert (out["total"], out["skipped"], out["eval_count"]) == (10, 3, 7)
    assert out["correct"] == 4  # with A-F, the "E" line is a hit
    summary_path(path).write_text(json.dumps({"total": 10, "skipped": 3, "eval_count": 6}))  # stale: not used
    out = rescore.rescore_file(path, tmp_path / "s.json", tmp_path / "o.jsonl")
    assert (out["total"], out["skipped"]) == (7, 0)


def test_rescore_missing_field(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"index": 0, "gt": "A"}) + "\n")
    with pytest.raises(ResultsFileError, match="record 1: missing field 'raw'"):
        rescore.rescore_file(path)


GOOD = {"index": 0, "gt": "A", "raw": "<answer>A</answer>", "subtask_type": "abs_dir"}


@pytest.mark.parametrize("content,code,message", [
    (None, 2, "no such file"),
    ('{"index": 0, "gt": "A"}\n', 1, "record 1: missing field 'raw'"),
    ('{"index": 0}\nnot json\n', 1, "line 2: invalid JSON"),
    ("", 1, "no records to rescore"),
    (json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n", 1, "record 2: question index 0 repeats record 1"),
    (json.dumps({**GOOD, "gt": "AB"}) + "\n", 1, "field 'gt' is 'AB', not one capital letter"),
    (json.dumps({**GOOD, "raw": 3}) + "\n", 1, "field 'raw' is int, not text"),
    ('{"index": 0, "gt": "A", "raw": NaN}\n', 1, "line 1: invalid JSON (NaN is not a number JSON allows)"),
    ('[{"index": 0, "gt": "A", "raw": "A"}]\n', 1, "line 1: not a results record"),
    (json.dumps({**GOOD, "error": "yes"}) + "\n", 1, "field 'error' is 'yes', not true/false"),
])
def test_rescore_cli_bad_input_is_one_line(tmp_path, content, code, message):
    path = tmp_path / "r.jsonl"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "evaluation.rescore", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stderr.startswith("python -m evaluation.rescore: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and str(path) in done.stderr
