"""Bad inputs of the data engine's command lines (tests/test_bad_inputs.py holds the other
commands), one table: bad flags and values, missing folders and files,
corrupt videos and frames, malformed annotation and intermediate files, an unreachable or refusing
LLM service. Each case runs the real command in a subprocess and must end with the expected exit
code (2 usage error, 1 failed) and one last line on stderr holding the expected words, with no
"Traceback" anywhere in the output.

Each row: (id, argv, expected exit code, words of the last line, setup). In argv, `{src}` is a
fresh copy of two synthetic SpatialVID clips, `{out}` a fresh engine folder whose clips finished the
`frames` and `objects` steps, `{tmp}` the case's own folder, `{sam3}` a tiny SAM3 checkpoint, `{url}`
a loopback LLM server. `setup(ctx)` breaks something in those copies first.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import NamedTuple

import pytest

from preprocess import clip_frames, objects
from scripts.llm_server import serve
from scripts.make_demo_spatialvid import make_demo

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-Bd9Kq3Lm7Zx2Vt5W"
CLIP, OTHER = "demo0_000", "demo0_001"


class Case(NamedTuple):
    id: str
    argv: list[str]
    code: int
    words: tuple[str, ...]
    setup: object = None  # setup(ctx): break something in the case's copies
    absent: tuple[str, ...] = ()  # must appear nowhere in the output


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())


def _annotation(ctx, clip: str, name: str) -> Path:
    group = "group_0000" if clip == CLIP else "group_0001"
    return ctx["src"] / "annotations" / group / clip / name


def _each_clip(edit):
    """A setup applying `edit(ctx, clip)` to both clips (so that every clip fails)."""
    return lambda ctx: [edit(ctx, clip) for clip in (CLIP, OTHER)]


def _indexes(text: str | bytes):
    return _each_clip(lambda ctx, clip: _write(_annotation(ctx, clip, "indexes.txt"), text))


def _annotation_file(name: str, text: str):
    return _each_clip(lambda ctx, clip: _write(_annotation(ctx, clip, name), text))


def _video(edit):
    def setup(ctx):
        for mp4 in sorted((ctx["src"] / "videos").rglob("*.mp4")):
            _write(mp4, edit(mp4.read_bytes()))
    return setup


def _masks_done(ctx) -> None:
    """Pretend the masks step finished both clips (the QA and merge steps start from there)."""
    _write(ctx["out"] / "state" / "masks" / "completed.txt", f"{CLIP}\n{OTHER}\n")


def _clip_json(edit):
    def setup(ctx):
        _masks_done(ctx)
        for clip in (CLIP, OTHER):
            path = ctx["out"] / "clips" / clip / "clip.json"
            clip_json = json.loads(path.read_text())
            edit(clip_json)
            _write(path, json.dumps(clip_json))
    return setup


def _objects_json(text: str):
    def setup(ctx):
        _masks_done(ctx)
        for clip in (CLIP, OTHER):
            _write(ctx["out"] / "clips" / clip / "objects.json", text)
    return setup


def qa_record(i: int = 0, **changes) -> dict:
    rec = {"id": f"{CLIP}_{i}", "clip_id": CLIP, "kind": "camera", "type": "camera_motion",
           "question": "How does the camera move?\nA. Pan Left\nB. Pan Right", "question_text": "How does the camera move?",
           "options": {"A": "Pan Left", "B": "Pan Right"}, "correct_answer": "B. Pan Right", "answer": "B",
           "cot": "<thinking>x <output_image></thinking><answer>B. Pan Right</answer>",
           "mask_image_paths": ["clips/a/m.jpg"], "original_image_paths": ["clips/a/f.jpg"],
           "segment": {"start_frame": 0, "end_frame": 1, "start_time_s": 0.0, "end_time_s": 0.25}}
    rec.update(changes)
    return {k: v for k, v in rec.items() if v is not ...}


def _qa_all(*lines: str | dict):
    def setup(ctx):
        _write(ctx["out"] / "qa" / "qa_all.jsonl",
               "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return setup


def _qa_items(clip_items: dict):
    """Setup: the camera_qa step finished these clips with these items (merge reads them)."""
    def setup(ctx):
        _masks_done(ctx)
        _write(ctx["out"] / "state" / "camera_qa" / "completed.txt", "".join(f"{c}\n" for c in clip_items))
        for clip, items in clip_items.items():
            _write(ctx["out"] / "clips" / clip / "camera_qa.json", items if isinstance(items, str) else json.dumps(items))
    return setup


def _records(*lines: str | dict):
    def setup(ctx):
        _write(ctx["tmp"] / "records.jsonl", "".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return setup


def _corrupt_frame(ctx) -> None:
    for clip in (CLIP, OTHER):
        _write(ctx["out"] / "clips" / clip / "frames" / "frame_0003.jpg", b"\xff\xd8 not a jpeg")


def _objects_not_done(ctx) -> None:
    shutil.rmtree(ctx["out"] / "state" / "objects")


def _skip_fraction_case(ctx) -> None:
    for name in ("f.jpg", "m.jpg"):
        _write(ctx["tmp"] / name, "x")
    _records(GOOD_DIFT, "{bad")(ctx)


def _fresh_out(ctx) -> None:
    shutil.rmtree(ctx["out"])
    ctx["out"].mkdir()


def _config(text: str):
    return lambda ctx: _write(ctx["tmp"] / "config.yaml", text)


FRAMES = ["frames", "--input", "{src}", "--out", "{tmp}/new"]
OBJECTS = ["objects", "--out", "{out}", "--llm_base_url", "{url}", "--llm_retries", "0"]
MASKS = ["masks", "--out", "{out}", "--model", "{sam3}", "--score_threshold", "0", "--device", "cpu"]
CAMERA_QA = ["camera_qa", "--out", "{out}", "--llm_base_url", "{url}"]
GOOD_DIFT = {"id": "r1", "image_input": ["f.jpg"], "image_output": ["m.jpg"], "text_input": "Q?",
             "text_output": "<think>a <output_image></think><answer>A</answer>"}

CASES = [
    # --- usage errors (exit 2): the flag or value is named
    Case("no-step", [], 2, ("give a step", "frames")),
    Case("unknown-step", ["framez"], 2, ("unknown step 'framez'", "frames")),
    Case("missing-required-flags", ["frames"], 2, ("required", "--out", "--input")),
    Case("unknown-flag", [*FRAMES, "--bogus", "1"], 2, ("unknown flag(s) --bogus",)),
    Case("misspelt-key-flag-not-echoed", [*OBJECTS, "--llm_api_keyy", "sk-Zz9Yy8Xx7Ww6"], 2, ("--llm_api_keyy",),
         absent=("Zz9Yy8",)),
    Case("not-an-int", [*FRAMES, "--workers", "many"], 2, ("--workers", "invalid int value")),
    Case("workers-zero", [*FRAMES, "--workers", "0"], 2, ("--workers must be >= 1",)),
    Case("skip-fraction-above-1", [*FRAMES, "--max_skip_fraction", "1.5"], 2, ("--max_skip_fraction must be in [0, 1]",)),
    Case("max-frames-zero", [*FRAMES, "--max_frames", "0"], 2, ("--max_frames must be >= 1",)),
    Case("bad-log-level", [*FRAMES, "--log_level", "LOUD"], 2, ("--log_level", "invalid choice")),
    Case("input-missing", ["frames", "--input", "{tmp}/nowhere", "--out", "{tmp}/new"], 2,
         ("--input", "nowhere: no such folder")),
    Case("input-without-videos", ["frames", "--input", "{tmp}", "--out", "{tmp}/new"], 2, ("no videos/ folder",)),
    Case("out-missing", ["objects", "--out", "{tmp}/nowhere", "--llm_base_url", "{url}"], 2,
         ("--out", "nowhere: no such folder")),
    Case("no-api-key", [*OBJECTS], 2, ("no API key", "OPENAI_API_KEY")),  # the runner unsets the variable
    Case("llm-timeout-zero", [*OBJECTS, "--llm_timeout", "0"], 2, ("--llm_timeout must be > 0",)),
    Case("llm-tries-zero", [*OBJECTS, "--llm_tries", "0"], 2, ("--llm_tries must be >= 1",)),
    Case("cot-tries-zero", [*CAMERA_QA, "--cot_tries", "0"], 2, ("--cot_tries must be >= 1",)),
    Case("score-threshold-above-1", [*MASKS, "--score_threshold", "2"], 2, ("--score_threshold must be in [0, 1]",)),
    Case("bad-dtype", [*MASKS, "--dtype", "float8"], 2, ("--dtype", "invalid choice")),
    Case("masks-model-missing", ["masks", "--out", "{out}", "--model", "./no/such/sam3"], 2,
         ("--model ./no/such/sam3: no such checkpoint folder",)),
    Case("masks-cuda-without-gpu", [*MASKS, "--device", "cuda"], 2, ("--device cuda", "no CUDA device")),
    Case("check-nothing-to-check", ["check"], 2, ("give --out", "--input")),
    Case("check-output-without-input", ["check", "--out", "{out}", "--output", "x.jsonl"], 2,
         ("--output goes with --input",)),
    Case("check-input-missing", ["check", "--input", "{tmp}/none.jsonl"], 2, ("--input", "none.jsonl: no such file")),
    Case("convert-input-missing", ["convert", "--out", "{out}", "--input", "{tmp}/none.jsonl"], 2, ("no such file",)),
    Case("config-missing", ["merge", "--config", "{tmp}/none.yaml"], 2, ("--config: file not found",)),
    Case("config-bad-yaml", ["merge", "--config", "{tmp}/config.yaml"], 2, ("config.yaml:", "not valid YAML"),
         _config("out: [1\n")),
    Case("config-unknown-key", ["merge", "--config", "{tmp}/config.yaml"], 2, ("unknown key 'outt'",),
         _config("outt: x\n")),
    # --- the job failed (exit 1): the file, line and field are named
    Case("frames-no-clips", ["frames", "--input", "{tmp}/empty", "--out", "{tmp}/new"], 1, ("no clips in",),
         lambda ctx: (ctx["tmp"] / "empty" / "videos" / "g").mkdir(parents=True)),
    Case("frames-clips-unknown", [*FRAMES, "--clips", "nosuchclip"], 1, ("--clips nosuchclip", "none of these clips")),
    Case("frames-corrupt-videos", FRAMES, 1, ("every clip failed", "demo0_000.mp4: not a decodable video"),
         _video(lambda data: b"\x00" * 64 + data[64:])),
    Case("frames-truncated-videos", FRAMES, 1, ("every clip failed", "not a decodable video"),
         _video(lambda data: data[:len(data) // 2])),
    Case("frames-empty-videos", FRAMES, 1, ("every clip failed", "not a decodable video"), _video(lambda data: b"")),
    Case("frames-indexes-missing", FRAMES, 1, ("every clip failed", "indexes.txt not found"),
         _each_clip(lambda ctx, clip: _annotation(ctx, clip, "indexes.txt").unlink())),
    Case("frames-indexes-not-integers", FRAMES, 1, ("indexes.txt:2: expected two integers", "'1 two'"),
         _indexes("0 0\n1 two\n")),
    Case("frames-indexes-underscore-number", FRAMES, 1, ("indexes.txt:1: expected two integers",), _indexes("0 1_0\n")),
    Case("frames-indexes-negative", FRAMES, 1, ("indexes.txt:1: negative frame index -4",), _indexes("0 -4\n")),
    Case("frames-indexes-repeated-seq", FRAMES, 1, ("indexes.txt:2: sequence number 0 repeats line 1",),
         _indexes("0 0\n0 2\n")),
    Case("frames-indexes-not-utf8", FRAMES, 1, ("indexes.txt:2: not UTF-8",), _indexes(b"0 0\n\xff\xfe 2\n")),
    Case("frames-indexes-empty", FRAMES, 1, ("indexes.txt: no frames listed",), _indexes("# nothing\n")),
    Case("frames-indexes-comma-separated", FRAMES, 1, ("indexes.txt: no frames listed",), _indexes("0,0\n1,2\n")),
    Case("frames-too-many", FRAMES, 1, ("51 frames listed, more than 50",),
         _indexes("".join(f"{i} {i % 20}\n" for i in range(51)))),
    Case("frames-indexes-past-the-end", FRAMES, 1, ("none of the 2 listed frames could be decoded",),
         _indexes("0 500\n1 900\n")),
    Case("frames-instructions-bad-json", FRAMES, 1, ("instructions.json:1: invalid JSON",),
         _annotation_file("instructions.json", "{'0->6': ['Pan Left']}")),
    Case("frames-instructions-bad-key", FRAMES, 1, ("instructions.json: segment key '0-6' is not 'a->b'",),
         _annotation_file("instructions.json", '{"0-6": ["Pan Left"]}')),
    Case("frames-instructions-backwards", FRAMES, 1, ("segment '6->2' does not go forward",),
         _annotation_file("instructions.json", '{"6->2": ["Pan Left"]}')),
    Case("frames-instructions-repeated-key", FRAMES, 1, ("instructions.json", "'0->6' appears twice"),
         _annotation_file("instructions.json", '{"0->6": ["Pan Left"], "0->6": ["Stay"]}')),
    Case("frames-instructions-moves-not-list", FRAMES, 1, ("expected a list of move names",),
         _annotation_file("instructions.json", '{"0->6": {"move": 1}}')),
    Case("frames-caption-not-text", FRAMES, 1, ("caption.json: field SceneSummary: expected a string",),
         _annotation_file("caption.json", '{"SceneSummary": ["a", "b"]}')),
    Case("frames-caption-nan", FRAMES, 1, ("caption.json", "invalid JSON (NaN"),
         _annotation_file("caption.json", '{"SceneSummary": NaN}')),
    Case("objects-before-frames", OBJECTS, 1, ("no clip has finished the frames step", "python -m preprocess frames"),
         _fresh_out),
    Case("objects-service-unreachable", ["objects", "--out", "{out}", "--llm_base_url", "http://127.0.0.1:9/v1",
                                         "--llm_retries", "1", "--llm_backoff", "0"], 1,
         ("every clip failed", "APIConnectionError after 2 attempts"), _objects_not_done),
    Case("objects-wrong-key", [*OBJECTS, "--llm_api_key", "sk-Wr0ngKey9Qq7"], 1,
         ("every clip failed", "HTTP 401", "Incorrect API key provided: ***"), _objects_not_done, absent=("Wr0ngKey",)),
    Case("masks-before-objects", MASKS, 1, ("no clip has finished the objects step",), _fresh_out),
    Case("masks-model-not-sam3", [*MASKS[:4], "{tmp}/empty_model"], 1, ("cannot load a SAM3 checkpoint",),
         lambda ctx: (ctx["tmp"] / "empty_model").mkdir()),
    Case("masks-corrupt-frame", MASKS, 1, ("every clip failed", "frame_0003.jpg"), _corrupt_frame),
    Case("qa-before-masks", CAMERA_QA, 1, ("no clip has finished the masks step",)),
    Case("qa-clip-json-bad-time", CAMERA_QA, 1, ("clip.json: frames[2]: field time_s: expected a number, got 'abc'",),
         _clip_json(lambda c: c["frames"][2].update(time_s="abc"))),
    Case("qa-clip-json-segment-out-of-range", CAMERA_QA, 1, ("segments[0]: field end_frame: 99 is out of range",),
         _clip_json(lambda c: c["segments"][0].update(end_frame=99))),
    Case("qa-clip-json-missing-frames", CAMERA_QA, 1, ("clip.json: field frames: missing",),
         _clip_json(lambda c: c.pop("frames"))),
    Case("qa-clip-json-missing", CAMERA_QA, 1, ("clip.json not found",),
         lambda ctx: [_masks_done(ctx)] + [(ctx["out"] / "clips" / c / "clip.json").unlink() for c in (CLIP, OTHER)]),
    Case("qa-objects-json-label-not-text", CAMERA_QA, 1, ("objects.json: field dynamic_object: expected a string",),
         _objects_json('{"dynamic_object": 5, "static_object": null}')),
    Case("qa-objects-json-missing-field", ["object_qa", "--out", "{out}", "--llm_base_url", "{url}"], 1,
         ("objects.json: field static_object: missing",), _objects_json('{"dynamic_object": "car"}')),
    Case("merge-before-masks", ["merge", "--out", "{out}"], 1, ("no clip has finished the masks step",)),
    Case("merge-qa-file-not-a-list", ["merge", "--out", "{out}"], 1, ("camera_qa.json: expected a JSON list",),
         _qa_items({CLIP: '{"id": "x"}'})),
    Case("merge-qa-answer-not-an-option", ["merge", "--out", "{out}"], 1,
         ("camera_qa.json: item 0: field answer: 'C' is not one of the options A, B",),
         _qa_items({CLIP: [qa_record(answer="C")]})),
    Case("merge-qa-ids-repeat-across-clips", ["merge", "--out", "{out}"], 1, ("field id", "is also in"),
         _qa_items({CLIP: [qa_record()], OTHER: [qa_record()]})),
    Case("convert-before-merge", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl: QA records not found", "merge")),
    Case("convert-empty", ["convert", "--out", "{out}"], 1, ("holds no QA records",), _qa_all()),
    Case("convert-bad-json-line", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:2: invalid JSON",),
         _qa_all(qa_record(0), "{not json")),
    Case("convert-missing-field", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:1: field question: missing",),
         _qa_all(qa_record(question=...))),
    Case("convert-options-a-list", ["convert", "--out", "{out}"], 1, ("field options: expected an object",),
         _qa_all(qa_record(options=["Pan Left", "Pan Right"]))),
    Case("convert-paths-a-string", ["convert", "--out", "{out}"], 1,
         ("field original_image_paths: expected a list of strings",), _qa_all(qa_record(original_image_paths="f.jpg"))),
    Case("convert-correct-answer-mismatch", ["convert", "--out", "{out}"], 1, ("field correct_answer",),
         _qa_all(qa_record(correct_answer="A. Pan Left"))),
    Case("convert-ids-repeat", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:2: field id", "repeats line 1"),
         _qa_all(qa_record(0), qa_record(0))),
    Case("convert-nan", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:1: invalid JSON (NaN",),
         _qa_all(json.dumps(qa_record(0)).replace('"end_time_s": 0.25', '"end_time_s": NaN'))),
    Case("convert-repeated-key", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:1", "'answer' appears twice"),
         _qa_all(json.dumps(qa_record(0))[:-1] + ', "answer": "A"}')),
    Case("convert-not-utf8", ["convert", "--out", "{out}"], 1, ("qa_all.jsonl:1: not UTF-8",),
         lambda ctx: _write(ctx["out"] / "qa" / "qa_all.jsonl", b'{"id": "\xff"}\n')),
    Case("check-before-convert", ["check", "--out", "{out}"], 1, ("dift_data.unchecked.jsonl: not found", "convert")),
    Case("check-every-record-bad", ["check", "--input", "{tmp}/records.jsonl"], 1,
         ("every record dropped", "2 of 2", "the log names each line"), _records("{bad", {"id": "x"})),
    Case("check-beyond-skip-fraction", ["check", "--input", "{tmp}/records.jsonl", "--max_skip_fraction", "0.2"], 1,
         ("more than --max_skip_fraction 0.2 dropped", "1 of 2"), _skip_fraction_case),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The inputs every case copies: two synthetic clips, an engine folder after `frames` and
    `objects`, a tiny SAM3, a loopback LLM server that requires the key."""
    from scripts.build_tiny_sam3 import write_tiny_sam3

    base = tmp_path_factory.mktemp("bad-inputs")
    src = make_demo(base / "src", num_clips=2, seed=0)
    server = serve(str(src / "truth.json"), 0, None, KEY)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    out = base / "out"
    assert clip_frames.main(["--input", str(src), "--out", str(out)]) == 0
    assert objects.main(["--out", str(out), "--llm_base_url", url, "--llm_api_key", KEY]) == 0
    yield {"src": src, "out": out, "url": url, "sam3": write_tiny_sam3(base / "sam3")}
    server.shutdown()
    server.server_close()


def run_case(case: Case, workspace: dict, tmp: Path, python_path: str = str(ROOT)) -> subprocess.CompletedProcess:
    """Copy the workspace, apply the case's setup, run `python -m preprocess ARGV` (one subprocess)."""
    ctx = {"tmp": tmp, "src": tmp / "src", "out": tmp / "out", "sam3": workspace["sam3"], "url": workspace["url"]}
    shutil.copytree(workspace["src"], ctx["src"])
    shutil.copytree(workspace["out"], ctx["out"])
    if case.setup:
        case.setup(ctx)
    argv = [a.format(**ctx) for a in case.argv]
    env = {**os.environ, "PYTHONPATH": python_path, "OPENAI_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    if case.id == "no-api-key":
        env.pop("OPENAI_API_KEY")
    return subprocess.run([sys.executable, "-m", "preprocess", *argv], cwd=tmp, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_with_the_right_exit_code(case, workspace, tmp_path):
    proc = run_case(case, workspace, tmp_path)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-3000:]
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    assert proc.returncode == case.code, f"exit {proc.returncode}: {last}"
    for words in case.words:
        assert words in last, f"{words!r} not in the last line: {last}"
    for secret in case.absent:
        assert secret not in output


def test_cases_have_unique_ids():
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv, code, words", [
    ([], 2, "usage: preprocess/run.sh"),
    (["{src}", "{tmp}/new", "{tmp}/no_sam3"], 1, "every clip failed"),
])
def test_run_sh_stops_at_the_first_failing_step_with_its_exit_code(workspace, tmp_path, argv, code, words):
    src = tmp_path / "src"
    shutil.copytree(workspace["src"], src)
    _video(lambda data: b"")({"src": src})  # every clip's video is empty: the frames step fails
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PY": sys.executable, "OPENAI_API_KEY": KEY}
    proc = subprocess.run(["bash", str(ROOT / "preprocess" / "run.sh"), *[a.format(src=src, tmp=tmp_path) for a in argv]],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == code and "Traceback" not in proc.stderr
    assert words in proc.stderr.strip().splitlines()[-1] if code == 1 else words in proc.stderr
    assert not (tmp_path / "new" / "state" / "objects").exists()  # no later step ran
