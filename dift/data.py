"""The DIFT training data: reading `dift_data.jsonl` (spec model_and_dift.md section 7).

One JSON object a line: `id`, `image_input` (list of frame paths, or one image path), `image_output`
(list of helper-image paths, or one path), `text_input` (question with options, no format suffix),
`text_output` (chain of thought with one `<output_image>` per helper image). Relative image paths
are resolved against `image_root` if given, else the JSONL's own folder; absolute paths are kept.

`DIFTJsonlDataset` validates every record once at construction (JSON, fields, `<output_image>`
count, helper-image count, image files present: a `stat`, no decoding) and keeps only the byte
offset and line number of each good record; records are re-read and images loaded per item, so
memory does not grow with the file. A bad record is a one-line `DIFTDataError` naming file:line, or,
with `skip_bad_records`, is counted and reported in one logged summary.

With `skip_bad_records`, a record whose images fail to load when its item is built (a corrupt or
truncated image: indexing only checks that the files exist) is replaced by the next loadable one
and reported in the item's `skipped_records`; the training process hands those back
(`note_unreadable`, as DataLoader workers' own counts never return) and they join the count.
Skipping more than `max_skip_fraction` of all records (default 1.0: only skipping every one) is a
`DIFTDataError`. Under several processes each counts the records of its own shard.
"""

from __future__ import annotations

import json
import logging
import os
from array import array
from collections import Counter
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from dift.core.frames import MAX_FRAMES, load_image, load_images, uniform_subsample

from .core.conversation import OUTPUT_FORMAT_SUFFIX, count_output_images

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("id", "image_input", "image_output", "text_input", "text_output")
MAX_REPORTED_BAD_RECORDS = 20  # messages kept for the summary; the counts cover every record
# Item and batch key: (source, message) of the records an item replaced because their images failed to load.
SKIPPED_RECORDS = "skipped_records"
UNREADABLE = "unreadable image"  # the summary's category for those


class DIFTDataError(ValueError):
    """A record of a DIFT JSONL file is unusable; the message starts with file:line."""


class _BadRecord(Exception):
    """Internal: why one record is bad (a short category for the summary, and the message)."""

    def __init__(self, category: str, message: str):
        super().__init__(message)
        self.category = category


def _as_path_list(value, field: str, allow_empty: bool = False) -> list[str]:
    if isinstance(value, str):
        paths = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        paths = value
    else:
        raise _BadRecord("bad field", f"field {field!r} must be a path or a list of paths, got {type(value).__name__}")
    if not paths and not allow_empty:
        raise _BadRecord("bad field", f"field {field!r} is an empty list")
    if any(not p.strip() for p in paths):
        raise _BadRecord("bad field", f"field {field!r} holds an empty path")
    return paths


class DIFTJsonlDataset(Dataset):
    """A lazy map-style dataset over a `dift_data.jsonl`.

    Items are what `dift.collator.DIFTCollator` takes: `visual` (list of PIL frames, at most
    `max_frames`, uniformly subsampled; or one PIL image), `question` (`text_input`), `text_output`,
    `helper_images` (list of PIL), plus `id` and `source` ("file:line", used in error messages).
    Frames and helper images are RGB and area-capped by `dift.core.frames.load_image`.
    """

    def __init__(self, path: str | os.PathLike, image_root: str | os.PathLike | None = None,
                 skip_bad_records: bool = False, max_frames: int = MAX_FRAMES, progress: bool = True,
                 max_skip_fraction: float = 1.0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"DIFT data file not found: {self.path}")
        self.image_root = Path(image_root) if image_root is not None else self.path.resolve().parent
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"image root folder not found: {self.image_root}")
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not 0.0 <= max_skip_fraction <= 1.0:
            raise ValueError(f"max_skip_fraction must be in [0, 1], got {max_skip_fraction}")
        self.skip_bad_records = skip_bad_records
        self.max_skip_fraction = max_skip_fraction
        self.max_frames = max_frames
        # Two flat integer arrays instead of record objects: 12 bytes per record.
        self._offsets = array("q")
        self._line_numbers = array("l")
        self.skipped: Counter[str] = Counter()  # bad-record category -> count
        self.bad_records: list[str] = []  # the first MAX_REPORTED_BAD_RECORDS messages
        self._counted_unreadable: set[str] = set()  # sources counted by note_unreadable
        self._unloadable: set[int] = set()  # items this process failed to load (passed over next time)
        self._file = None
        self._file_pid = None
        self._index(progress)

    # ------------------------------------------------------------------------------------------
    # Indexing and validation

    def _index(self, progress: bool) -> None:
        offset = 0
        with open(self.path, "rb") as fh, tqdm(total=self.path.stat().st_size, unit="B", unit_scale=True,
                                                desc=f"indexing {self.path.name}", disable=not progress,
                                                leave=False) as bar:
            for line_number, raw in enumerate(fh, start=1):
                bar.update(len(raw))
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue  # blank lines (a trailing newline, hand-edited files) are not records
                try:
                    self._validate(self._parse(raw))
                except _BadRecord as bad:
                    message = f"{self.path}:{line_number}: {bad}"
                    if not self.skip_bad_records:
                        raise DIFTDataError(message + " (pass --skip_bad_records to skip such records)") from None
                    self.skipped[bad.category] += 1
                    if len(self.bad_records) < MAX_REPORTED_BAD_RECORDS:
                        self.bad_records.append(message)
                    continue
                self._offsets.append(start)
                self._line_numbers.append(line_number)
        if self.skipped:
            log.warning("%s", self.skip_summary())
        if not len(self):
            raise DIFTDataError(f"{self.path}: no usable records")
        self._check_skip_budget()
        log.info("%s: %d records", self.path, len(self))

    # ------------------------------------------------------------------------------------------
    # Skipped records

    @property
    def num_records(self) -> int:
        """Records in the file, good and skipped."""
        return len(self) + sum(n for kind, n in self.skipped.items() if kind != UNREADABLE)

    def skip_summary(self) -> str | None:
        """One line: how many records were skipped, of what kinds, and the first one's message."""
        if not self.skipped:
            return None
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.skipped.items()))
        return (f"{self.path}: skipped {self.num_skipped} bad record(s) of {self.num_records} ({kinds}); "
                f"first: {self.bad_records[0]}")

    def _check_skip_budget(self) -> None:
        skipped, total = self.num_skipped, self.num_records
        if skipped and (skipped == total or skipped > self.max_skip_fraction * total):
            raise DIFTDataError(f"{self.path}: {skipped} of {total} records skipped, more than --max_skip_fraction "
                                f"{self.max_skip_fraction:g} allows (first: {self.bad_records[0]})")

    def note_unreadable(self, records) -> None:
        """Count the (source, message) records an item replaced (its `skipped_records`), once each;
        raises `DIFTDataError` when the skipped records pass `max_skip_fraction`."""
        for source, message in records:
            if source in self._counted_unreadable:
                continue
            self._counted_unreadable.add(source)
            self.skipped[UNREADABLE] += 1
            if len(self.bad_records) < MAX_REPORTED_BAD_RECORDS:
                self.bad_records.append(message)
        self._check_skip_budget()

    @staticmethod
    def _parse(raw: bytes) -> dict:
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise _BadRecord("not JSON", f"not valid JSON ({err})") from None
        if not isinstance(record, dict):
            raise _BadRecord("not JSON", f"a JSON {type(record).__name__}, not an object")
        return record

    def _validate(self, record: dict) -> None:
        missing = [f for f in REQUIRED_FIELDS if f not in record]
        if missing:
            raise _BadRecord("missing field", f"missing field(s) {', '.join(missing)}")
        for field in ("text_input", "text_output"):
            if not isinstance(record[field], str):
                raise _BadRecord("bad field", f"field {field!r} must be a string")
        frames = _as_path_list(record["image_input"], "image_input")
        helpers = _as_path_list(record["image_output"], "image_output", allow_empty=True)
        if not helpers:
            raise _BadRecord("no helper images", "image_output is empty (every DIFT sample needs a helper image)")
        n_tags = count_output_images(record["text_output"])
        if n_tags != len(helpers):
            raise _BadRecord("output_image mismatch",
                             f"text_output has {n_tags} <output_image> but image_output has {len(helpers)} path(s)")
        for field, paths in (("image_input", frames), ("image_output", helpers)):
            for p in paths:
                if not self.resolve(p).is_file():
                    raise _BadRecord("missing image", f"{field} image not found: {self.resolve(p)}")

    def resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.image_root / p

    # ------------------------------------------------------------------------------------------
    # Access

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def __len__(self) -> int:
        return len(self._offsets)

    def source(self, index: int) -> str:
        return f"{self.path}:{self._line_numbers[index]}"

    def record(self, index: int) -> dict:
        """The raw JSON record of item `index` (re-read from the file)."""
        if self._file is None or self._file_pid != os.getpid():
            # One handle per process: DataLoader workers must not share a file position.
            self._file = open(self.path, "rb")  # noqa: SIM115 (kept open for the dataset's lifetime)
            self._file_pid = os.getpid()
        self._file.seek(self._offsets[index])
        return json.loads(self._file.readline())

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} records")
        if not self.skip_bad_records:
            return self._load(index)
        replaced = []
        for candidate in (i % len(self) for i in range(index, index + len(self))):
            if candidate in self._unloadable:
                continue
            try:
                item = self._load(candidate)
            except DIFTDataError as err:
                self._unloadable.add(candidate)
                log.warning("%s (skipped: --skip_bad_records)", err)
                replaced.append((self.source(candidate), str(err)))
                continue
            if replaced:
                item[SKIPPED_RECORDS] = replaced
            return item
        raise DIFTDataError(f"{self.path}: the images of none of the {len(self)} records could be loaded"
                            + (f" (first: {replaced[0][1]})" if replaced else ""))

    def _load(self, index: int) -> dict:
        record = self.record(index)
        source = self.source(index)
        try:
            if isinstance(record["image_input"], str):
                visual = load_image(self.resolve(record["image_input"]))
            else:
                frames = uniform_subsample([self.resolve(p) for p in record["image_input"]], self.max_frames)
                visual = load_images(frames)
            helpers = record["image_output"]
            helpers = [helpers] if isinstance(helpers, str) else helpers
            helper_images = load_images([self.resolve(p) for p in helpers])
        except (OSError, Image.DecompressionBombError) as err:  # corrupt, truncated, or deleted since indexing
            raise DIFTDataError(f"{source}: {err}") from None
        question = record["text_input"]
        # The suffix is added when the conversation is rendered; a record that already carries
        # it must not get it twice.
        question = question.removesuffix(OUTPUT_FORMAT_SUFFIX)
        return dict(id=str(record["id"]), source=source, visual=visual, question=question,
                    text_output=record["text_output"], helper_images=helper_images)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None  # file handles do not pickle (DataLoader workers with spawn)
        state["_file_pid"] = None
        return state

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
