"""The 4DRL data reader and rollout frames (spec fourdrl.md sections 1 and 2): both record layouts,
several files, the frame rule, and one-line errors for bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from fourdrl.data import (
    RLDataError,
    build_rl_dataset,
    cap_longer_side,
    load_rl_frames,
    prompt_frames_and_question,
    read_rl_records,
)
from scripts.make_demo_rl_data import write_demo_rl_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four records: the first points to an mp4 (the original's layout), the others to frames (the engine's)."""
    return write_demo_rl_data(tmp_path_factory.mktemp("rl"), num_samples=4, seed=1, num_frames=3, size=56, videos=1)


def write_lines(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_both_layouts_become_prompts(data):
    records = read_rl_records(data, progress=False)
    assert len(records) == 4 and [r.source for r in records] == [f"{data}:{i}" for i in range(1, 5)]
    raw = [json.loads(line) for line in data.read_text().splitlines()]
    for record, line in zip(records, raw):
        assert record.solution == line["Correct"]
        assert record.question == (f"{line['Question']}\n\nA. {line['A']}\nB. {line['B']}\nC. {line['C']}\n"
                                   f"D. {line['D']}")
    # The video record was decoded at 1 fps into the frame cache (3 s -> 3 frames); frame records keep their files.
    assert len(records[0].frames) == 3 and "videos" not in records[0].frames[0]
    assert records[1].frames == [str((data.parent / p).resolve()) for p in raw[1]["frame_paths"]]
    row = build_rl_dataset(records)[1]
    assert row["solution"] == raw[1]["Correct"] and row["source"] == f"{data}:2"
    frames, question = prompt_frames_and_question(row["prompt"])
    assert frames == records[1].frames and question == records[1].question
    assert row["prompt"][0]["role"] == "user"


def test_several_files_missing_options_and_the_frame_limit(data, tmp_path):
    frames = sorted((data.parent / "frames").rglob("*.jpg"))
    many = [str(frames[i % len(frames)]) for i in range(40)]
    second = write_lines(tmp_path / "more.jsonl", [
        {"Question": "Which way?", "A": "Left", "B": "", "C": "Up", "Correct": " c ", "frame_paths": many}])
    records = read_rl_records(f"{data}:{second}", max_frames=16, progress=False)
    assert len(records) == 5
    last = records[-1]
    assert last.question == "Which way?\n\nA. Left\nC. Up" and last.solution == "C"
    # 40 frames -> 16 at uniform linspace indices (truncated), as the original.
    expected = [many[int(i)] for i in np.linspace(0, 39, 16)]
    assert last.frames == [str(p) for p in expected]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "a JSON list, not an object"),
    ({"A": "x", "Correct": "A", "frame_paths": ["f.jpg"]}, "missing field 'Question'"),
    ({"Question": "q", "A": "x", "B": "y", "Correct": "", "frame_paths": ["f.jpg"]}, "field 'Correct' is empty"),
    ({"Question": "q", "A": "x", "B": "y", "Correct": "D", "frame_paths": ["f.jpg"]},
     "field 'Correct' is 'D', not one of the options A, B"),
    ({"Question": "q", "A": "x", "Correct": "A"}, "missing field 'frame_paths' or 'video_path'"),
    ({"Question": "q", "A": "x", "Correct": "A", "frame_paths": "f.jpg"}, "'frame_paths' must be a non-empty list"),
    ({"Question": "q", "A": "x", "Correct": "A", "frame_paths": ["missing.jpg"]}, "frame_paths: file not found: "),
    ({"Question": "q", "A": "x", "Correct": "A", "video_path": "missing.mp4"}, "video_path: file not found: "),
    ({"Question": ["q"], "A": "x", "Correct": "A", "frame_paths": ["f.jpg"]}, "field 'Question' must be a string"),
])
def test_a_bad_record_is_one_line_naming_file_and_line(tmp_path, line, message):
    Image.new("RGB", (56, 56)).save(tmp_path / "f.jpg")
    good = {"Question": "q", "A": "x", "B": "y", "Correct": "B", "frame_paths": ["f.jpg"]}
    path = write_lines(tmp_path / "rl.jsonl", [good, "", line])
    with pytest.raises(RLDataError) as info:
        read_rl_records(path, progress=False)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ") and message in text and "\n" not in text
    assert "--skip_bad_records" in text
    # Skipped and counted instead, the good record kept.
    assert [r.source for r in read_rl_records(path, skip_bad_records=True, progress=False)] == [f"{path}:1"]


def test_an_undecodable_video_and_an_empty_file(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    path = write_lines(tmp_path / "rl.jsonl", [{"Question": "q", "A": "x", "Correct": "A", "video_path": "broken.mp4"}])
    with pytest.raises(RLDataError, match=rf"^{path}:1: video_path: cannot decode"):
        read_rl_records(path, progress=False)
    with pytest.raises(RLDataError, match="no usable RL records"):
        read_rl_records(path, skip_bad_records=True, progress=False)
    with pytest.raises(FileNotFoundError, match="RL data file not found"):
        read_rl_records(str(tmp_path / "nope.jsonl"), progress=False)


def test_rollout_frames_have_their_longer_side_capped(tmp_path):
    """Longer side <= 448, bilinear, aspect kept, never upscaled; read at full size first (the other
    stages' area cap would resize before and differently)."""
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8))
    big.save(tmp_path / "big.png")
    Image.new("RGB", (100, 60)).save(tmp_path / "small.png")
    assert cap_longer_side(big).size == (448, 252)
    assert cap_longer_side(Image.new("RGB", (300, 900))).size == (149, 448)
    [frame, small] = load_rl_frames([tmp_path / "big.png", tmp_path / "small.png"])
    assert small.size == (100, 60)
    assert np.array_equal(np.asarray(frame), np.asarray(big.resize((448, 252), Image.Resampling.BILINEAR)))
