"""Benchmark loading: parquet / JSON / JSONL, field aliases, option formats, one-line row errors,
and the synthetic benchmark builder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dift.core.frames import VideoDecodeError, decode_video_frames
from evaluation.benchmark import BenchmarkError, load_benchmark, parse_options
from evaluation.metrics import SUBTASK_COLUMNS
from scripts.make_demo_benchmark import build_benchmark

ROWS = [
    {"videoID": "v0", "question": "Where does it go?", "options": ["A. left", "B. right"], "answer": " b ", "type": "abs_dir"},
    {"videoID": "v1", "question": "How fast?", "options": ["A. slow", "B. fast", "C. still", "D. both"], "answer": "C.",
     "type": "abs_spd"},
    {"videoID": "v2", "question": "Free text?", "options": [], "answer": "a", "type": "non_temp"},
]


def write(path, rows):
    if path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".parquet", ".json", ".jsonl"])
def test_formats_agree(tmp_path, suffix):
    items = load_benchmark(write(tmp_path / f"b{suffix}", ROWS))
    assert [it.index for it in items] == [0, 1, 2]
    assert [it.gt for it in items] == ["B", "C", "A"]
    assert items[0].options == ("A. left", "B. right")
    assert items[0].question_text == "Where does it go?\n\nA. left\nB. right"
    assert items[2].question_text == "Free text?"  # no options: no blank line
    assert items[1].video_path("/data").as_posix() == "/data/v1.mp4"
    assert [it.subtask_type for it in items] == ["abs_dir", "abs_spd", "non_temp"]


def test_parquet_options_arrive_as_numpy_arrays(tmp_path):
    path = write(tmp_path / "b.parquet", ROWS)
    assert isinstance(pd.read_parquet(path)["options"][0], np.ndarray)  # the format the loader must accept
    assert load_benchmark(path)[1].options == ("A. slow", "B. fast", "C. still", "D. both")


def test_json_dict_aliases_and_string_lists(tmp_path):
    records = {"x": {"video": "v9", "question": "Q", "candidates": "['A. up', 'B. down']", "answer": "B",
                     "type": "REL_DIR"},
               "y": {"video": 7, "question": "Q2", "candidates": None, "answer": "d", "type": "rel_dis"}}
    path = tmp_path / "b.json"
    path.write_text(json.dumps(records))
    items = load_benchmark(path)
    assert items[0].video_id == "v9" and items[0].options == ("A. up", "B. down")
    assert items[1].video_id == "7" and items[1].options == () and items[1].gt == "D"


def test_max_samples_keeps_first_rows(tmp_path):
    rows = ROWS + [{"videoID": "bad"}]  # a broken row past the limit is never read
    items = load_benchmark(write(tmp_path / "b.jsonl", rows), max_samples=2)
    assert [it.video_id for it in items] == ["v0", "v1"]


def test_null_video_id_is_kept_for_skipping(tmp_path):
    rows = [dict(ROWS[0], videoID=None)]
    assert load_benchmark(write(tmp_path / "b.parquet", rows))[0].video_path("/d") is None


@pytest.mark.parametrize("broken,message", [
    ({"videoID": "v", "options": [], "answer": "A", "type": "abs_dir"}, "row 1: missing field 'question'"),
    ({"videoID": "v", "question": "Q", "options": [], "type": "abs_dir"}, "row 1: missing field 'answer'"),
    ({"question": "Q", "options": [], "answer": "A", "type": "abs_dir"}, "row 1: missing field 'videoID'"),
    ({"videoID": "v", "question": "Q", "answer": "A"}, "row 1: missing field 'type'"),
    ({"videoID": "v", "question": "Q", "answer": "  ", "type": "t"}, "row 1: field 'answer' is empty"),
    ({"videoID": "v", "question": "Q", "options": "A. x, B. y", "answer": "A", "type": "t"}, "row 1 field 'options'"),
    ({"videoID": "v", "question": "Q", "candidates": "__import__('os')", "answer": "A", "type": "t"},
     "row 1 field 'candidates': not a list literal"),
])
def test_bad_rows_name_file_and_row(tmp_path, broken, message):
    path = write(tmp_path / "b.jsonl", [ROWS[0], broken])
    with pytest.raises(BenchmarkError) as info:
        load_benchmark(path)
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(BenchmarkError, match="line 2: invalid JSON"):
        load_benchmark(tmp_path / "b.jsonl")
    (tmp_path / "b.csv").write_text("x")
    with pytest.raises(BenchmarkError, match="unknown benchmark format"):
        load_benchmark(tmp_path / "b.csv")
    with pytest.raises(FileNotFoundError, match="benchmark file not found"):
        load_benchmark(tmp_path / "none.parquet")


def test_parse_options_formats():
    assert parse_options(np.array(["A. a", "B. b"])) == ("A. a", "B. b")
    assert parse_options("('A. a', 'B. b')") == ("A. a", "B. b")
    assert parse_options(["A. a", None, " B. b "]) == ("A. a", " B. b ")  # raw strings, as the original
    assert parse_options(float("nan")) == ()


def test_demo_benchmark_builder(tmp_path):
    out = build_benchmark(tmp_path / "bench", per_type=1, frames=4, size=56, formats=("parquet", "json", "jsonl"),
                          missing=1, corrupt=1)
    loaded = {fmt: load_benchmark(out / f"benchmark.{fmt}") for fmt in ("parquet", "json", "jsonl")}
    items = loaded["parquet"]
    assert len(items) == 13 and {it.subtask_type for it in items} == set(SUBTASK_COLUMNS)
    for other in ("json", "jsonl"):  # same questions through aliases, string lists, case changes
        got = loaded[other]
        assert [(i.video_id, i.question_text, i.gt) for i in got] == [(i.video_id, i.question_text, i.gt) for i in items]
    for it in items:
        assert it.gt in "ABCD" and all(o[:3] == f"{'ABCD'[k]}. " for k, o in enumerate(it.options))
    videos = sorted((out / "videos").glob("*.mp4"))
    assert len(videos) == 6  # 7 videos, one missing


def test_demo_benchmark_keeps_every_subtask_evaluable(tmp_path):
    """The demo's benchmark (2 per type, a missing and a corrupt video): both skip cases are exercised
    and still every sub-task has a question whose video decodes, so its table shows no N/A."""
    out = build_benchmark(tmp_path / "bench", per_type=2, frames=4, size=56, missing=1, corrupt=1)
    items = load_benchmark(out / "benchmark.parquet")
    readable, missing, corrupt = set(), set(), set()
    for video_id in {it.video_id for it in items}:
        path = out / "videos" / f"{video_id}.mp4"
        if not path.is_file():
            missing.add(video_id)
            continue
        try:
            decode_video_frames(path)
            readable.add(video_id)
        except VideoDecodeError:
            corrupt.add(video_id)
    assert len(missing) == 1 and len(corrupt) == 1
    assert {it.subtask_type for it in items if it.video_id in readable} == set(SUBTASK_COLUMNS)


def test_question_text_reaches_the_prompt_as_the_file_has_it(tmp_path, tiny_latent):
    """No stripping: the original concatenated the raw question and option strings."""
    from dift.core.checkpoint import load_processor
    from dift.core.conversation import render_generation_prompt

    path = tmp_path / "bench.jsonl"
    path.write_text(json.dumps({"videoID": "v", "question": "  Where does it go? ", "options": [" A. left ", "B. right\t"],
                                "answer": "a", "type": "abs_dir"}) + "\n")
    [item] = load_benchmark(path)
    assert item.question_text == "  Where does it go? \n\n A. left \nB. right\t"
    prompt = render_generation_prompt(load_processor(tiny_latent), [], item.question_text)
    assert "  Where does it go? \n\n A. left \nB. right\t\nFirst, think" in prompt


BAD_BENCHMARKS = [
    ("answer_outside_options", ".jsonl", [{**ROWS[0], "answer": "C"}], "row 0: field 'answer' is 'C', not one of the options' letters AB"),
    ("answer_not_a_letter", ".jsonl", [{**ROWS[2], "answer": "7"}], "row 0: field 'answer' is '7', not an option letter"),
    ("duplicate_ids", ".jsonl", [{**ROWS[0], "id": 5}, {**ROWS[1], "id": 5}], "row 1: field 'id' = '5' repeats row 0"),
    ("nan_type", ".parquet", [ROWS[0], {**ROWS[1], "type": float("nan")}], "row 1: field 'type' is empty"),
    ("nan_question", ".parquet", [{**ROWS[0], "question": float("nan")}], "row 0: field 'question' is empty"),
    ("nan_literal_jsonl", ".jsonl", None, "line 1: invalid JSON (NaN is not a number JSON allows)"),
    ("empty_json_array", ".json", [], "no questions in the file"),
    ("array_of_arrays", ".json", [["v0", "Q", "A"]], "row 0: expected an object, got list"),
    ("corrupt_parquet", ".parquet", None, "not a readable parquet file"),
]


@pytest.mark.parametrize("name, suffix, rows, words", BAD_BENCHMARKS, ids=[c[0] for c in BAD_BENCHMARKS])
def test_bad_benchmark_data_is_one_line_naming_file_and_row(tmp_path, name, suffix, rows, words):
    path = tmp_path / f"bench{suffix}"
    if name == "nan_literal_jsonl":
        path.write_text('{"videoID": "v", "question": NaN, "answer": "A", "type": "abs_dir"}\n')
    elif name == "corrupt_parquet":
        write(path, ROWS)
        path.write_bytes(path.read_bytes()[:-40])  # truncated: footer gone
    else:
        write(path, rows)
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and words in message, message
