"""Fuzzing the DIFT JSONL reader (hypothesis): either every record read back is valid, or a one-line
`DIFTDataError` names the file and line; with --skip_bad_records the bad ones are counted, never
half-read. No uncaught exception, no silent wrong value."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from dift.core.conversation import OUTPUT_FORMAT_SUFFIX
from dift.core.tokens import OUTPUT_IMAGE_PLACEHOLDER
from dift.data import DIFTDataError, DIFTJsonlDataset

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IMAGES = ["f0.jpg", "f1.jpg", "h0.jpg", "missing.jpg", "corrupt.jpg", ""]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=10),
                    st.sampled_from(IMAGES))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=2)),
                      max_leaves=6)
good = st.fixed_dictionaries({
    "id": st.one_of(st.text(max_size=5), st.integers()),
    "image_input": st.one_of(st.just(["f0.jpg", "f1.jpg"]), st.just("f0.jpg"), st.lists(st.sampled_from(IMAGES), max_size=3)),
    "image_output": st.one_of(st.just(["h0.jpg"]), st.just("h0.jpg"), st.lists(st.sampled_from(IMAGES), max_size=2)),
    "text_input": st.one_of(st.text(max_size=20), st.integers()),
    "text_output": st.sampled_from([f"<think>{OUTPUT_IMAGE_PLACEHOLDER}</think><answer>A</answer>",
                                    "<think>none</think><answer>A</answer>",
                                    f"{OUTPUT_IMAGE_PLACEHOLDER}{OUTPUT_IMAGE_PLACEHOLDER}"]),
})
FIELDS = ["id", "image_input", "image_output", "text_input", "text_output"]
lines = st.lists(st.one_of(good.map(json.dumps),
                           st.dictionaries(st.sampled_from(FIELDS), values, max_size=5).map(json.dumps),
                           st.sampled_from(["", "{", "[]", "null", "\x00"])), max_size=5)


def make_folder(tmp: Path) -> None:
    for name in ("f0.jpg", "f1.jpg", "h0.jpg"):
        Image.new("RGB", (56, 56), (10, 200, 30)).save(tmp / name)
    (tmp / "corrupt.jpg").write_bytes(b"not a jpeg")


def check_item(item) -> None:
    assert isinstance(item["question"], str) and not item["question"].endswith(OUTPUT_FORMAT_SUFFIX)
    assert len(item["helper_images"]) == item["text_output"].count(OUTPUT_IMAGE_PLACEHOLDER) >= 1
    assert all(isinstance(im, Image.Image) for im in item["helper_images"])


@FUZZ
@given(rows=lines, skip=st.booleans())
def test_dift_jsonl_reader(rows, skip):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp)
        path = tmp / "data.jsonl"
        path.write_text("".join(r + "\n" for r in rows))
        try:
            dataset = DIFTJsonlDataset(path, skip_bad_records=skip, progress=False)
            items = [dataset[i] for i in range(len(dataset))]
        except DIFTDataError as err:
            message = str(err)
            assert "\n" not in message and str(path) in message, message
            return
        assert 0 < len(items) <= len(rows)
        for item in items:
            check_item(item)
