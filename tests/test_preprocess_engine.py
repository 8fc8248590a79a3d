"""The whole data engine on synthetic SpatialVID clips: a tiny random SAM3, the loopback LLM server,
every step for real; then resume after SIGKILL, seeding, conversion and checking."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dift.core.tokens import OUTPUT_IMAGE_PLACEHOLDER
from preprocess import camera_qa, check, clip_frames, convert, masks, merge, object_qa, objects
from preprocess.check import check_file
from preprocess.labels import camera_moves_text
from preprocess.layout import clip_rng
from preprocess.object_qa import draw_type
from preprocess.runner import StepState
from scripts.build_tiny_sam3 import write_tiny_sam3
from scripts.llm_server import serve
from scripts.make_demo_spatialvid import make_demo

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-Ng7q2Lx9Wp4Z"  # random-looking: any 6 characters of a key in a row are scrubbed from outputs
NUM_CLIPS = 3


def _start_server(truth, faults=None, tmp=None, delay=0.0):
    faults_path = None
    if faults:
        faults_path = tmp / f"faults_{time.monotonic_ns()}.json"
        faults_path.write_text(json.dumps(faults))
    server = serve(str(truth), 0, str(faults_path) if faults_path else None, KEY, 1.0, delay)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def _llm(url):
    return ["--llm_base_url", url, "--llm_api_key", KEY, "--llm_backoff", "0.01"]


def _qa(module, out, url, seed=0, *extra):
    return module.main(["--out", str(out), "--seed", str(seed), "--workers", "3", *_llm(url), *extra])


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    src = make_demo(root / "svid", num_clips=NUM_CLIPS, seed=0)
    sam3 = write_tiny_sam3(root / "sam3")
    # faults in the QA steps: a CoT answering the wrong option or too short is rejected and asked
    # again; transient service errors and an unparsable judgement are retried; none changes the output
    server, url = _start_server(src / "truth.json", [
        {"match": "demo0_001/camera_qa/0->6/cot", "faults": ["wrongletter"]},
        {"match": "demo0_000/camera_qa/6->11/verify", "faults": ["500", "429"]},
        {"match": "demo0_002/camera_qa/0->6/question", "faults": ["503"]},
        {"match": "demo0_001/object_qa/direction", "faults": ["badjson"]},
        {"match": "demo0_002/object_qa/cot", "faults": ["missing"]},
    ], root)
    out = root / "out"
    assert clip_frames.main(["--input", str(src), "--out", str(out)]) == 0
    assert objects.main(["--out", str(out), *_llm(url)]) == 0
    assert masks.main(["--out", str(out), "--model", str(sam3), "--score_threshold", "0", "--batch_size", "12"]) == 0
    assert _qa(camera_qa, out, url) == 0
    assert _qa(object_qa, out, url) == 0
    assert merge.main(["--out", str(out)]) == 0
    assert convert.main(["--out", str(out)]) == 0
    assert check.main(["--out", str(out)]) == 0
    assert all(not entry["faults"] for entry in server.faults.entries)  # every fault was served
    yield {"root": root, "src": src, "out": out, "sam3": sam3, "url": url,
           "truth": json.loads((src / "truth.json").read_text())}
    server.shutdown()
    server.server_close()


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_frames_have_real_times_and_segments(engine):
    out = engine["out"]
    assert sorted(StepState(out, "frames").completed()) == [f"demo0_{i:03d}" for i in range(NUM_CLIPS)]
    clip = json.loads((out / "clips" / "demo0_000" / "clip.json").read_text())
    assert len(clip["frames"]) == 12 and clip["source_fps"] == 8.0
    for n, f in enumerate(clip["frames"]):
        assert f["file"] == f"frame_{n:04d}.jpg" and (out / "clips" / "demo0_000" / "frames" / f["file"]).is_file()
        assert f["source_index"] == 2 * f["seq"] and f["time_s"] == pytest.approx(f["source_index"] / 8.0)
    assert [(s["key"], s["start_frame"], s["end_frame"], s["end_time_s"]) for s in clip["segments"]] == [
        ("0->6", 0, 6, 1.5), ("6->11", 6, 11, 2.75)]


def test_objects_and_masks(engine):
    out, truth = engine["out"], engine["truth"]
    for cid in truth:
        clip_dir = out / "clips" / cid
        got = json.loads((clip_dir / "objects.json").read_text())
        assert got["dynamic_object"] == truth[cid]["dynamic_object"]
        for kind in ("dynamic", "static"):
            files = sorted((clip_dir / f"masks_{kind}").glob("frame_*.npy"))
            assert len(files) == 12  # score threshold 0: every frame keeps its best instance
            mask = np.load(files[0])
            assert mask.dtype == np.uint8 and mask.shape == (120, 160) and set(np.unique(mask)) <= {0, 255}
        assert len(list((clip_dir / "masked_frames").glob("frame_*.jpg"))) == 12
    stats = json.loads((out / "qa" / "merge_stats.json").read_text())
    assert stats["with_both"] == NUM_CLIPS and stats["total_frames"] == 12 * NUM_CLIPS


def test_qa_records_are_consistent(engine):
    out, truth = engine["out"], engine["truth"]
    records = _jsonl(out / "qa" / "qa_all.jsonl")
    camera = [r for r in records if r["kind"] == "camera"]
    objs = [r for r in records if r["kind"] == "object"]
    assert len(camera) == 2 * NUM_CLIPS and len(objs) == 2 * NUM_CLIPS  # 2 segments, 2 question types a clip
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert len(r["options"]) == 4 and len(set(r["options"].values())) == 4
        assert r["correct_answer"] == f"{r['answer']}. {r['options'][r['answer']]}"
        assert r["cot"].endswith(f"<answer>{r['correct_answer']}</answer>")
        assert r["cot"].count(OUTPUT_IMAGE_PLACEHOLDER) == len(r["mask_image_paths"]) >= 2
        for p in r["mask_image_paths"] + r["original_image_paths"]:
            assert not os.path.isabs(p) and (out / p).is_file()
        assert r["question"].startswith(r["question_text"]) and "\nA. " in r["question"]
        gt = truth[r["clip_id"]]
        if r["kind"] == "camera":
            moves = gt["camera"]["first" if r["id"].endswith("0->6") else "second"]
            assert r["options"][r["answer"]] == camera_moves_text(moves)
            assert len(r["mask_image_paths"]) == (2 if len(moves) == 1 else 3)  # k>1 adds a frame inside
        else:
            expected = {"direct": gt["direction"], "bbox": gt["direction"], "distance": gt["distance"],
                        "speed": gt["speed"]}[r["type"]]
            assert r["options"][r["answer"]] == expected
            if r["type"] == "bbox":
                assert "[" in r["question_text"]
    # the diagonal direction of the first demo clip is reachable end to end
    assert any(r["options"][r["answer"]] == "Moving Left-Up" for r in objs if r["clip_id"] == "demo0_000")


def test_demo_truth_is_the_direction_in_the_scene():
    from scripts.make_demo_spatialvid import scene_direction

    # the engine asks for the direction after compensating the camera: a square drifting left on
    # screen while the camera pans right faster moves right in the scene
    assert scene_direction("left", camera_dx=3, step=2) == "Moving Right"
    assert scene_direction("stationary", camera_dx=-1) == "Moving Left"
    assert scene_direction("left-up", camera_dx=1) == "Moving Left-Up"  # the demo's pans are slower than the square
    assert scene_direction("stationary", camera_dx=0) == "Stationary"


def test_compound_speed_and_distance_labels_are_reachable(engine, tmp_path):
    cid = "demo0_000"

    def drawn(seed):  # the two question types object_qa draws for this clip with `seed`
        rng, weights = clip_rng(seed, cid, object_qa.STEP), dict(object_qa.TYPE_WEIGHTS)
        types = [draw_type(rng, weights)]
        del weights[types[0]]
        return {types[0], draw_type(rng, weights)}

    seed = next(s for s in range(10000) if drawn(s) == {"speed", "distance"})
    speed, distance = "First Speeding Up Then Slowing Down", "First Getting Farther, Then Closer"
    truth = dict(engine["truth"])
    truth[cid] = {**truth[cid], "speed": speed, "distance": distance}
    (tmp_path / "truth.json").write_text(json.dumps(truth))
    server, url = _start_server(tmp_path / "truth.json")
    try:
        copy = _fresh_qa_copy(engine, "compound")
        assert _qa(object_qa, copy, url, seed, "--clips", cid) == 0
    finally:
        server.shutdown()
        server.server_close()
    items = json.loads((copy / "clips" / cid / "object_qa.json").read_text())
    assert {r["type"]: r["options"][r["answer"]] for r in items} == {"speed": speed, "distance": distance}


def test_converted_records_load_in_the_dift_reader(engine):
    from dift.data import DIFTJsonlDataset

    out = engine["out"]
    dift_records = _jsonl(out / "dift_data.jsonl")
    assert len(dift_records) == 4 * NUM_CLIPS
    for rec in dift_records:
        assert set(rec) == {"id", "image_input", "image_output", "text_input", "text_output"}
        assert rec["text_output"].startswith("<think>") and "<thinking>" not in rec["text_output"]
        assert rec["text_output"].count(OUTPUT_IMAGE_PLACEHOLDER) == len(rec["image_output"])
        assert all(not os.path.isabs(p) for p in rec["image_input"] + rec["image_output"])
    dataset = DIFTJsonlDataset(out / "dift_data.jsonl", progress=False)
    assert len(dataset) == len(dift_records)
    item = dataset[0]
    assert len(item["helper_images"]) == len(dift_records[0]["image_output"]) and len(item["visual"]) == 12

    rl = _jsonl(out / "rl_data.jsonl")
    assert len(rl) == len(dift_records)
    qa = {r["id"]: r for r in _jsonl(out / "qa" / "qa_all.jsonl")}
    for rec in rl:
        assert rec[rec["Correct"]] == qa[rec["id"]]["options"][qa[rec["id"]]["answer"]]
        assert rec["Question"] == qa[rec["id"]]["question_text"] and (out / rec["frame_paths"][0]).is_file()


def test_check_drops_bad_records_and_survives_an_empty_file(engine, tmp_path):
    out = engine["out"]
    lines = (out / "dift_data.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["text_output"] = bad["text_output"].replace(OUTPUT_IMAGE_PLACEHOLDER, "", 1)
    src = out / "mixed.jsonl"
    src.write_text("\n".join([lines[0], json.dumps(bad), "{not json", lines[1]]) + "\n")
    kept, dropped = check_file(src, tmp_path / "elsewhere" / "clean.jsonl")
    assert kept == 2 and sum(dropped.values()) == 2
    moved = _jsonl(tmp_path / "elsewhere" / "clean.jsonl")
    assert all((tmp_path / "elsewhere" / p).resolve().is_file() for p in moved[0]["image_input"])  # rebased
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert check_file(empty, tmp_path / "empty_clean.jsonl")[0] == 0
    assert (tmp_path / "empty_clean.jsonl").read_text() == ""


def _fresh_qa_copy(engine, name) -> Path:
    """A copy of the engine output as it was before the QA steps."""
    copy = engine["root"] / name
    shutil.copytree(engine["out"], copy)
    for step in ("camera_qa", "object_qa"):
        shutil.rmtree(copy / "state" / step)
        for f in copy.glob(f"clips/*/{step}.json"):
            f.unlink()
    return copy


def _qa_files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.glob("clips/*/*_qa.json"))}


def test_same_seed_same_records_other_seed_other_choices(engine):
    same = _fresh_qa_copy(engine, "same_seed")
    assert _qa(camera_qa, same, engine["url"]) == 0 and _qa(object_qa, same, engine["url"]) == 0
    assert _qa_files(same) == _qa_files(engine["out"])
    other = _fresh_qa_copy(engine, "other_seed")
    assert _qa(camera_qa, other, engine["url"], 1) == 0 and _qa(object_qa, other, engine["url"], 1) == 0
    a, b = _qa_files(engine["out"]), _qa_files(other)
    assert a.keys() == b.keys() and a != b


def test_resume_after_sigkill_gives_the_same_outputs(engine):
    copy = _fresh_qa_copy(engine, "killed")
    slow, slow_url = _start_server(engine["src"] / "truth.json", delay=0.15)
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENAI_API_KEY": KEY}
        proc = subprocess.Popen([sys.executable, "-m", "preprocess", "object_qa", "--out", str(copy), "--workers", "1",
                                 "--llm_base_url", slow_url], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        completed = copy / "state" / "object_qa" / "completed.txt"
        deadline = time.monotonic() + 120  # a bound on waiting, not a timed assertion
        while time.monotonic() < deadline and proc.poll() is None:
            if completed.is_file() and completed.read_text().strip():
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        slow.shutdown()
        slow.server_close()
    done_before = StepState(copy, "object_qa").completed()
    assert 1 <= len(done_before) < NUM_CLIPS  # killed mid-run
    assert _qa(object_qa, copy, engine["url"]) == 0
    assert StepState(copy, "object_qa").completed()[:len(done_before)] == done_before
    assert len(completed.read_text().splitlines()) == NUM_CLIPS  # nothing redone twice
    original = {k: v for k, v in _qa_files(engine["out"]).items() if k.endswith("object_qa.json")}
    assert {k: v for k, v in _qa_files(copy).items() if k.endswith("object_qa.json")} == original
    assert _qa(camera_qa, copy, engine["url"]) == 0 and merge.main(["--out", str(copy)]) == 0
    assert (copy / "qa" / "qa_all.jsonl").read_bytes() == (engine["out"] / "qa" / "qa_all.jsonl").read_bytes()


def test_masks_rerun_loads_no_model_when_every_clip_is_done(engine):
    copy = engine["root"] / "masks_rerun"
    (copy / "state").mkdir(parents=True)
    shutil.copytree(engine["out"] / "state" / "masks", copy / "state" / "masks")
    shutil.copytree(engine["out"] / "state" / "objects", copy / "state" / "objects")
    # a model path that cannot load: a finished step must not need it
    assert masks.main(["--out", str(copy), "--model", str(copy / "no-such-model")]) == 0
    assert json.loads((copy / "state" / "masks" / "summary.json").read_text())["skipped_done"] == NUM_CLIPS


def test_tracking_masks(engine):
    copy = engine["root"] / "tracking"
    shutil.copytree(engine["out"], copy)
    shutil.rmtree(copy / "state" / "masks")
    clip_dir = copy / "clips" / "demo0_000"
    for f in sorted((clip_dir / "frames").glob("*.jpg"))[4:]:  # a short clip and one object: tracking is slow on CPU
        f.unlink()
    (clip_dir / "objects.json").write_text(json.dumps({"dynamic_object": "red square", "static_object": None}))
    assert masks.main(["--out", str(copy), "--model", str(engine["sam3"]), "--tracking", "--score_threshold", "0",
                       "--clips", "demo0_000"]) == 0
    assert StepState(copy, "masks").completed() == ["demo0_000"]
    info = json.loads((clip_dir / "masks.json").read_text())
    assert info["dynamic"]["label"] == "red square" and len(info["dynamic"]["scores"]) >= 1
    assert info["static"] == {"label": None, "scores": {}} and not list((clip_dir / "masks_static").glob("*.npy"))
    assert len(list((clip_dir / "masked_frames").glob("*.jpg"))) == 4
    mask = np.load(sorted((clip_dir / "masks_dynamic").glob("*.npy"))[0])
    assert mask.dtype == np.uint8 and mask.shape == (120, 160) and mask.max() == 255
