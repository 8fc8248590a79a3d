"""Fuzzing the data engine's readers (hypothesis): LLM replies (the JSON extraction and every
reply's field checks, the chain of thought), indexes.txt, SpatialVID's instructions.json and
caption.json, the engine's own clip.json / objects.json / QA files / QA JSONL, the training records
`check` reads, and the state files (completed ids, failures, cached replies).

Property: either the parsed value is valid, or a one-line error names the file (with the line, item
or field); never an uncaught exception, never a silent wrong value. Well-formed inputs written with
random spacing, comments and fences must parse to exactly what was written."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preprocess.camera_qa import _yes_no
from preprocess.check import check_file, record_problem
from preprocess.cot import structure_problem, validate_cot
from preprocess.labels import DIRECTIONS, DISTANCES, SPEEDS, Choice
from preprocess.llm import ReplyCache, ReplyInvalid, extract_json
from preprocess.object_qa import _motion, _speed, _verification
from preprocess.objects import parse_objects
from preprocess.qa import _question_field
from preprocess.records import (
    RecordError,
    read_clip_json,
    read_objects_json,
    read_qa_items,
    read_qa_jsonl,
)
from preprocess.runner import StepState
from preprocess.spatialvid import read_indexes, read_instructions, read_scene_summary

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 60), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.sampled_from(["null", "None", " ", "Moving Left-Up", "Pan Left", "A"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)
filler = st.text(alphabet=st.characters(blacklist_characters="{}`"), max_size=20)


def one_line_naming(err: Exception, *names: str) -> None:
    message = str(err)
    assert message and "\n" not in message, message
    for name in names:
        assert name in message, (name, message)


def in_file(name: str, content: str | bytes, read, error=RecordError):
    """`read(path)` of a file holding `content`: its value, or None after checking the error names the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        try:
            return read(path)
        except (error, FileNotFoundError) as err:
            one_line_naming(err, str(path))
            return None


# --------------------------------------------------------------------------------------------
# LLM replies


@FUZZ
@given(text=st.one_of(st.text(max_size=80), st.builds(lambda a, b: a + "{" + b + "}", st.text(max_size=20),
                                                      st.text(max_size=40))))
def test_extract_json_returns_an_object_or_says_why(text):
    try:
        obj = extract_json(text)
    except ReplyInvalid as err:
        one_line_naming(err)
        return
    assert isinstance(obj, dict)


@FUZZ
@given(obj=st.dictionaries(st.text(max_size=8), values, max_size=4), before=filler, after=filler,
       fence=st.sampled_from(["", "```json\n", "```\n", "```JSON "]))
def test_extract_json_finds_exactly_the_object_written(obj, before, after, fence):
    body = json.dumps(obj, indent=None if len(obj) % 2 else 1)
    text = f"{before}{fence}{body}{'```' if fence else ''}{after}"
    assert extract_json(text) == obj


def test_extract_json_refuses_ambiguous_replies():
    for text in ('{"a": 1, "a": 2}', '{"a": NaN}', '{"a": 1} and {"b": 2}', "[1, 2]"):
        try:
            extract_json(text)
        except ReplyInvalid:
            continue
        raise AssertionError(text)


reply_objects = st.one_of(st.dictionaries(st.sampled_from([
    "dynamic_object", "static_object", "answer", "question", "is_any_dynamic", "valid_frame_indices",
    "object_description", "direction", "distance", "speed"]), values, max_size=5), values)


@FUZZ
@given(obj=reply_objects, n=st.integers(0, 8))
def test_reply_field_checks_give_valid_values_or_reply_invalid(obj, n):
    def accepts(check):
        try:
            return True, check(obj)
        except ReplyInvalid as err:
            one_line_naming(err)
            return False, None

    ok, objects = accepts(parse_objects)
    if ok:
        for label in objects.values():
            assert label is None or (isinstance(label, str) and label == label.strip() and label.lower() != "null")
    ok, yes = accepts(_yes_no)
    if ok:
        assert isinstance(yes, bool) and str(obj["answer"]).strip().upper() == ("YES" if yes else "NO")
    ok, verdict = accepts(lambda o: _verification(o, n))
    if ok:
        dynamic, valid, description = verdict
        assert isinstance(dynamic, bool) and valid == sorted(set(valid)) and all(0 <= i < n for i in valid)
        assert isinstance(description, str)
    ok, motion = accepts(_motion)
    if ok:
        assert motion[0] in DIRECTIONS and motion[1] in DISTANCES
    ok, speed = accepts(_speed)
    if ok:
        assert speed in SPEEDS
    ok, question = accepts(_question_field)
    if ok:
        assert isinstance(question, str)


choices = st.builds(lambda opts, i: Choice(tuple(opts), i % len(opts)),
                    st.lists(st.sampled_from(["Pan Left", "Pan Right", "Stay", "Tilt Up", "Dolly In"]), min_size=4,
                             max_size=4, unique=True), st.integers(0, 3))
cot_parts = st.lists(st.one_of(st.sampled_from(["<thinking>", "</thinking>", "<answer>", "</answer>", "<output_image>",
                                                "A. Pan Left", "B", "(C)", "```"]),
                               st.text(max_size=60)), max_size=10)


@FUZZ
@given(parts=cot_parts, m=st.integers(0, 3), choice=choices, wellformed=st.booleans())
def test_chain_of_thought_is_accepted_only_when_valid(parts, m, choice, wellformed):
    if wellformed:  # the shape of an acceptable CoT, with fuzzed text around the placeholders
        thinking = " ".join(parts).replace("<", "(").replace(">", ")") + " x" * 60
        tags = " to ".join(["<output_image>"] * m)
        text = f"<thinking>{thinking} from {tags} it is clear.</thinking><answer>{choice.correct_answer}</answer>"
    else:
        text = "".join(parts)
    try:
        cot = validate_cot(text, m, choice)
    except ReplyInvalid as err:
        one_line_naming(err)
        return
    assert structure_problem(cot, m, "thinking") is None
    assert cot.endswith(f"<answer>{choice.correct_answer}</answer>")


# --------------------------------------------------------------------------------------------
# SpatialVID inputs


index_lines = st.lists(st.one_of(
    st.tuples(st.integers(-3, 99), st.integers(-3, 999)).map(lambda p: f"{p[0]} {p[1]}"),
    st.sampled_from(["# seq index", "", "   ", "1 2 3", "7", "x 1", "1 y", "1_0 2", "+3 4", "٣ 4", "\t5\t6\t"]),
    st.text(max_size=12)), max_size=8)


@FUZZ
@given(lines=index_lines, newline=st.sampled_from(["\n", "\r\n"]), raw=st.one_of(st.none(), st.binary(max_size=40)))
def test_indexes_txt_reader(lines, newline, raw):
    content = raw if raw is not None else newline.join(lines)
    pairs = in_file("indexes.txt", content, read_indexes)
    if pairs is not None:
        seqs = [s for s, _ in pairs]
        assert len(seqs) == len(set(seqs)) and all(isinstance(i, int) and i >= 0 for _, i in pairs)


@FUZZ
@given(pairs=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 5000)), max_size=8, unique_by=lambda p: p[0]),
       comments=st.lists(st.text(max_size=10).map(lambda t: "#" + t.replace("\n", " ")), max_size=3),
       spacing=st.sampled_from([" ", "\t", "   "]))
def test_indexes_txt_reads_exactly_what_was_written(pairs, comments, spacing):
    text = "\n".join(comments + [f"{spacing}{s}{spacing}{i}" for s, i in pairs]) + "\n"
    assert in_file("indexes.txt", text, read_indexes) == pairs


@FUZZ
@given(data=st.one_of(st.dictionaries(st.one_of(st.sampled_from(["0->6", "6->11", " 3 -> 9 ", "9->3", "a->b", "٣->٤"]),
                                                st.text(max_size=6)), values, max_size=4), values),
       repeat_key=st.booleans())
def test_instructions_json_reader(data, repeat_key):
    text = json.dumps(data)
    if repeat_key and isinstance(data, dict) and data:
        text = text[:-1] + ", " + json.dumps(next(iter(data))) + ": []}"
    segments = in_file("instructions.json", text, read_instructions)
    if segments is not None:
        for seg in segments:
            assert 0 <= seg.start_seq < seg.end_seq and all(isinstance(m, str) and m for m in seg.moves)
        assert len(segments) == len(data)


@FUZZ
@given(data=st.one_of(st.dictionaries(st.sampled_from(["SceneSummary", "other"]), values, max_size=2), values))
def test_caption_json_reader(data):
    summary = in_file("caption.json", json.dumps(data), read_scene_summary)
    if summary is not None:
        assert isinstance(summary, str)
        if isinstance(data, dict) and isinstance(data.get("SceneSummary"), str):
            assert summary == data["SceneSummary"].strip()


# --------------------------------------------------------------------------------------------
# The engine's own files


def good_clip(n: int = 3) -> dict:
    return {"video_id": "v", "group": "g", "source_video": "v.mp4", "source_fps": 8.0, "width": 160, "height": 120,
            "scene_summary": "", "segments": [{"key": "0->2", "start_frame": 0, "end_frame": n - 1, "start_time_s": 0,
                                               "end_time_s": 0.5, "moves": ["Pan Left"]}],
            "frames": [{"file": f"frame_{i:04d}.jpg", "seq": i, "source_index": 2 * i, "time_s": i / 4} for i in range(n)]}


def perturbed(record: dict, data) -> dict:
    """`record` with one field, possibly nested one level, replaced by a fuzzed value (or removed)."""
    rec = json.loads(json.dumps(record))
    key = data.draw(st.sampled_from(sorted(rec)))
    target = rec
    if isinstance(rec[key], list) and rec[key] and isinstance(rec[key][0], dict) and data.draw(st.booleans()):
        target = rec[key][data.draw(st.integers(0, len(rec[key]) - 1))]
        key = data.draw(st.sampled_from(sorted(target)))
    if data.draw(st.booleans()):
        target.pop(key)
    else:
        target[key] = data.draw(values)
    return rec


def valid_clip(clip: dict) -> None:
    n = len(clip["frames"])
    assert n and all(math.isfinite(f["time_s"]) and f["time_s"] >= 0 and isinstance(f["file"], str) for f in clip["frames"])
    for seg in clip["segments"]:
        assert 0 <= seg["start_frame"] < seg["end_frame"] < n and all(isinstance(m, str) for m in seg["moves"])
    assert isinstance(clip["width"], int) and clip["width"] > 0 and isinstance(clip["scene_summary"], str)


@FUZZ
@given(data=st.data())
def test_clip_json_reader(data):
    clip = perturbed(good_clip(), data) if data.draw(st.booleans()) else data.draw(values)
    found = in_file("clip.json", json.dumps(clip), read_clip_json)
    if found is not None:
        valid_clip(found)


@FUZZ
@given(obj=st.one_of(st.dictionaries(st.sampled_from(["dynamic_object", "static_object", "x"]), values, max_size=3),
                     values))
def test_objects_json_reader(obj):
    found = in_file("objects.json", json.dumps(obj), read_objects_json)
    if found is not None:
        assert set(found) == {"dynamic_object", "static_object"}
        assert all(v is None or (isinstance(v, str) and v.strip()) for v in found.values())
        assert found == {k: obj[k] for k in found}


def good_qa(i: int = 0) -> dict:
    return {"id": f"c_{i}", "clip_id": "c", "kind": "camera", "type": "camera_motion", "question": "Q?\nA. x\nB. y",
            "question_text": "Q?", "options": {"A": "x", "B": "y"}, "correct_answer": "B. y", "answer": "B",
            "cot": "<thinking>t</thinking><answer>B. y</answer>", "mask_image_paths": ["m.jpg"],
            "original_image_paths": ["f.jpg"], "segment": {}}


def valid_qa(rec: dict) -> None:
    assert rec["answer"] in rec["options"] and rec["correct_answer"] == f"{rec['answer']}. {rec['options'][rec['answer']]}"
    assert all(isinstance(p, str) for p in rec["mask_image_paths"] + rec["original_image_paths"])
    assert rec["mask_image_paths"] and rec["original_image_paths"] and rec["kind"] in ("camera", "object")


@FUZZ
@given(data=st.data(), n=st.integers(0, 3))
def test_qa_files_readers(data, n):
    records = [perturbed(good_qa(i), data) if data.draw(st.booleans()) else good_qa(i) for i in range(n)]
    items = in_file("camera_qa.json", json.dumps(records), read_qa_items)
    if items is not None:
        assert items == records
        for rec in items:
            valid_qa(rec)
    lines = [json.dumps(r) for r in records] + data.draw(st.lists(st.sampled_from(["", "{oops", "[]", "null"]), max_size=1))
    found = in_file("qa_all.jsonl", "\n".join(lines) + "\n", read_qa_jsonl)
    if found is not None:
        assert found == records and len({r["id"] for r in found}) == len(found)
        for rec in found:
            valid_qa(rec)


@FUZZ
@given(data=st.binary(max_size=120), name=st.sampled_from(["clip.json", "objects.json", "camera_qa.json", "qa_all.jsonl"]))
def test_engine_readers_on_arbitrary_bytes(data, name):
    read = {"clip.json": read_clip_json, "objects.json": read_objects_json, "camera_qa.json": read_qa_items,
            "qa_all.jsonl": read_qa_jsonl}[name]
    in_file(name, data, read)


training_record = st.one_of(
    st.fixed_dictionaries({"id": st.sampled_from(["r1", "r2", "", 3]), "image_input": st.sampled_from([["f.jpg"], "f.jpg", [], ["nope.jpg"], ["f\x00.jpg"]]),
                           "image_output": st.sampled_from([["m.jpg"], ["m.jpg", "m.jpg"], [], "m.jpg"]),
                           "text_input": st.sampled_from(["Q?", "", None]),
                           "text_output": st.sampled_from(["<think>a <output_image></think><answer>A</answer>",
                                                           "<think>a</think><answer>A</answer>", 5])}),
    st.fixed_dictionaries({"id": st.sampled_from(["r1", "r3"]), "Question": st.sampled_from(["Q?", ""]),
                           "A": st.sampled_from(["x", ""]), "B": st.just("y"), "Correct": st.sampled_from(["A", "b", "E", 1]),
                           "frame_paths": st.sampled_from([["f.jpg"], [], "f.jpg", None])}),
    st.dictionaries(st.sampled_from(["id", "image_input", "Question", "Correct", "text_output"]), values, max_size=4))


@FUZZ
@given(records=st.lists(training_record, max_size=5), garbage=st.sampled_from(["", "{bad\n", "NaN\n", '{"id": 1, "id": 2}\n']))
def test_check_keeps_only_valid_records(records, garbage):
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for name in ("f.jpg", "m.jpg"):
            (base / name).write_bytes(b"x")
        src, dst = base / "in.jsonl", base / "out" / "kept.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in records) + garbage)
        kept, dropped = check_file(src, dst)
        assert kept + sum(dropped.values()) == len(records) + (1 if garbage else 0)
        out = [json.loads(line) for line in dst.read_text().splitlines()]
        assert len(out) == kept and len({r["id"] for r in out}) == kept
        for rec in out:
            assert record_problem(rec, dst.parent) is None  # paths rebased onto the output's folder


@FUZZ
@given(completed=st.binary(max_size=60), failed=st.lists(st.one_of(values.map(json.dumps), st.text(max_size=20)), max_size=4),
       replies=st.lists(st.one_of(values.map(json.dumps), st.text(max_size=20)), max_size=4))
def test_state_files_are_read_whatever_a_kill_or_an_editor_left(completed, failed, replies):
    with tempfile.TemporaryDirectory() as tmp:
        state = StepState(tmp, "objects")
        state.dir.mkdir(parents=True)
        state.completed_path.write_bytes(completed)
        state.failed_path.write_text("\n".join(failed))
        assert all(isinstance(c, str) for c in state.completed())
        failures = state.failed()
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in failures.items())
        assert not set(failures) & set(state.completed())
        path = state.replies_path("clip")
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(replies) + "\n")
        cache = ReplyCache(path)
        assert all(isinstance(k, tuple) and isinstance(v, str) for k, v in cache.replies.items())
