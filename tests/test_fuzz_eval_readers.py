"""Fuzzing the evaluation's readers (hypothesis): the benchmark (JSONL, JSON, parquet), the results
file `rescore` reads, and a checkpoint's generation_config.json. Property: either the parsed value
is valid, or a one-line error names the file (and the row, line or field); never an uncaught
exception, never a silent wrong value."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dift.core.decoding import GenerationConfigError, read_checkpoint_defaults
from evaluation.benchmark import BenchmarkError, load_benchmark, option_letters
from evaluation.rescore import rescore_file
from evaluation.results import ResultsFileError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=12), st.sampled_from(["A", "b ", "C.", "", "  ", "E", "A. left"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                      max_leaves=8)
FIELDS = ["videoID", "video", "question", "options", "candidates", "answer", "type", "id"]
records = st.dictionaries(st.sampled_from(FIELDS), values, max_size=len(FIELDS))
# Mostly well-formed rows with one field perturbed, so the checks past the first ones get reached.
good_row = st.fixed_dictionaries({
    "videoID": st.one_of(st.text(min_size=1, max_size=6), st.none()),
    "question": st.text(max_size=20),
    "options": st.one_of(st.just(["A. left", "B. right"]), st.lists(st.text(max_size=6), max_size=4),
                         st.just("['A. up', 'B. down']"), st.just("not a list")),
    "answer": st.sampled_from(["A", "b", " B ", "C", "", "z", "1"]),
    "type": st.sampled_from(["abs_dir", "rel_spd", "", "UNKNOWN"]),
})
rows = st.lists(st.one_of(good_row, records), min_size=0, max_size=5)


def valid_items(items) -> None:
    for item in items:
        assert isinstance(item.question, str) and isinstance(item.subtask_type, str) and item.subtask_type.strip()
        assert len(item.gt) == 1 and "A" <= item.gt <= "Z"
        if item.options:
            assert item.gt in option_letters(item.options)
        assert item.video_id is None or isinstance(item.video_id, str)


def check(path: Path, error_type, call) -> None:
    try:
        result = call(path)
    except error_type as err:
        message = str(err)
        assert "\n" not in message and str(path) in message, message
        return
    return result


@FUZZ
@given(rows=rows, form=st.sampled_from(["jsonl", "json", "json_dict"]))
def test_benchmark_json_readers(rows, form):
    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".jsonl" if form == "jsonl" else ".json"
        path = Path(tmp) / f"bench{suffix}"
        if form == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        elif form == "json":
            path.write_text(json.dumps(rows))
        else:
            path.write_text(json.dumps({str(i): r for i, r in enumerate(rows)}))
        items = check(path, BenchmarkError, load_benchmark)
        if items is not None:
            assert len(items) == len(rows) > 0
            valid_items(items)


@FUZZ
@given(rows=st.lists(good_row, min_size=1, max_size=4), cut=st.integers(0, 400), flip=st.integers(0, 4000))
def test_benchmark_parquet_reader(rows, cut, flip):
    buffer = io.BytesIO()
    frame = pd.DataFrame([{**r, "options": r["options"] if isinstance(r["options"], list) else [r["options"]]}
                          for r in rows])
    frame.to_parquet(buffer, index=False)
    data = bytearray(buffer.getvalue())
    if cut:
        data = data[:-cut] if cut < len(data) else data[:1]
    if flip < len(data):
        data[flip] ^= 0xFF
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.parquet"
        path.write_bytes(bytes(data))
        items = check(path, BenchmarkError, load_benchmark)
        if items is not None:
            valid_items(items)


results_rows = st.lists(st.one_of(
    st.fixed_dictionaries({"index": st.integers(0, 3), "gt": st.sampled_from(["A", "B", "", "AB", "x"]),
                           "raw": st.one_of(st.text(max_size=30), st.integers()),
                           "subtask_type": st.sampled_from(["abs_dir", "non_temp", "??"]),
                           "error": st.one_of(st.booleans(), st.just("no"))}),
    st.dictionaries(st.sampled_from(["index", "gt", "raw", "error"]), values, max_size=4)), max_size=5)


@FUZZ
@given(rows=results_rows, torn=st.booleans(), garbage=st.sampled_from(["", "not json\n", "NaN\n", "[1]\n"]))
def test_rescore_reader(rows, torn, garbage):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.jsonl"
        text = "".join(json.dumps(r) + "\n" for r in rows) + garbage
        if torn and text:
            text = text[:-1]
        path.write_text(text)
        summary = check(path, ResultsFileError, lambda p: rescore_file(p, Path(tmp) / "s.json", Path(tmp) / "o.jsonl"))
        if summary is not None:
            assert 0 < summary["eval_count"] <= len(rows) + 1
            assert 0 <= summary["accuracy"] <= 1


@FUZZ
@given(config=st.one_of(st.dictionaries(st.sampled_from(["top_k", "repetition_penalty", "temperature"]), values,
                                        max_size=3), values))
def test_generation_config_reader(config):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "generation_config.json").write_text(json.dumps(config))
        found = check(Path(tmp) / "generation_config.json", GenerationConfigError,
                      lambda p: read_checkpoint_defaults(p.parent))
        if found is not None:
            assert set(found) <= {"top_k", "repetition_penalty"}
            if "top_k" in found:
                assert isinstance(found["top_k"], int) and found["top_k"] >= 0
            if "repetition_penalty" in found:
                assert found["repetition_penalty"] > 0


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".json", ".parquet"]))
def test_benchmark_arbitrary_bytes(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"bench{suffix}"
        path.write_bytes(data)
        items = check(path, BenchmarkError, load_benchmark)
        if items is not None:
            valid_items(items)


@FUZZ
@given(data=st.binary(max_size=200))
def test_rescore_arbitrary_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.jsonl"
        path.write_bytes(data)
        check(path, ResultsFileError, lambda p: rescore_file(p, Path(tmp) / "s.json", Path(tmp) / "o.jsonl"))
