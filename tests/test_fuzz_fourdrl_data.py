"""Fuzzing the 4DRL JSONL reader (hypothesis): either every record read back is valid (its answer among
its options, every frame a file, at most max_frames), or a one-line `RLDataError` names the file and
line; with --skip_bad_records the bad ones are counted, never half-read. No uncaught exception, no
silent wrong value (non-UTF-8 lines included)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dift.core.frames import FrameCache
from fourdrl.data import RLDataError, read_rl_records

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAMES = ["f0.jpg", "f1.jpg", "missing.jpg", "", "sub/../f0.jpg"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=8),
                    st.sampled_from(["A", "b", " C ", "E", "AB"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                      max_leaves=6)
good = st.fixed_dictionaries({
    "Question": st.text(min_size=1, max_size=20),
    "A": st.text(max_size=6), "B": st.text(max_size=6), "C": st.just("up"), "D": st.just(""),
    "Correct": st.sampled_from(["A", "B", "C", "D", " c", "E"]),
    "frame_paths": st.one_of(st.just(["f0.jpg", "f1.jpg"]), st.lists(st.sampled_from(FRAMES), max_size=3),
                             st.just("f0.jpg")),
})
FIELDS = ["Question", "A", "B", "C", "D", "Correct", "frame_paths", "video_path"]
lines = st.lists(st.one_of(good.map(json.dumps),
                           st.dictionaries(st.sampled_from(FIELDS), values, max_size=7).map(json.dumps),
                           st.sampled_from(["", "{", "[]", "null", "\x00", "\"text\""]).map(str),
                           st.just(b'{"Question": "where\xff", "A": "l", "B": "r", "Correct": "A", '
                                   b'"frame_paths": ["f0.jpg"]}')), max_size=5)


@FUZZ
@given(rows=lines, skip=st.booleans(), max_frames=st.integers(1, 3))
def test_rl_jsonl_reader(rows, skip, max_frames):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in ("f0.jpg", "f1.jpg"):
            Image.new("RGB", (56, 56), (10, 200, 30)).save(tmp / name)
        (tmp / "sub").mkdir()
        path = tmp / "rl.jsonl"
        path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows))
        try:
            records = read_rl_records(str(path), skip_bad_records=skip, max_frames=max_frames,
                                      cache=FrameCache(str(tmp / "cache")), progress=False)
        except RLDataError as err:
            message = str(err)
            assert "\n" not in message and str(path) in message, message
            return
        assert 0 < len(records) <= len(rows)
        for record in records:
            assert re.fullmatch(rf"{re.escape(str(path))}:\d+", record.source)
            options = re.findall(r"^([A-D])\. ", record.question, flags=re.MULTILINE)
            assert record.solution in options and "\ufffd" not in record.question
            assert 1 <= len(record.frames) <= max_frames and all(Path(f).is_file() for f in record.frames)
