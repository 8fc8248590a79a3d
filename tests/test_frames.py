"""The frame module: the 1 fps index rule, uniform sub-sampling, decoding backends, the on-disk
cache (a second run does not decode), corrupt / missing videos, and the ordered prefetcher."""

from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dift.core import frames as F
from scripts.synthetic_media import moving_square_frames, write_mp4


def reference_indices(num_frames, source_fps, fps=1.0):
    """The spec's rule, spelled out: count = max(1, floor(duration * fps)); frame i at
    floor(i * source_fps / fps), clamped to the last frame; duplicates dropped."""
    if num_frames <= 0:
        return []
    if not source_fps or source_fps <= 0:
        source_fps = 30.0
    count = max(1, math.floor(num_frames / source_fps * fps))
    out, seen = [], set()
    for i in range(count):
        idx = min(math.floor(i * source_fps / fps), num_frames - 1)
        if idx not in seen:
            seen.add(idx)
            out.append(idx)
    return out


@pytest.mark.parametrize("n,src,expected", [(100, 30, [0, 30, 60]), (8, 4, [0, 4]), (1, 30, [0]), (3, 30, [0]),
                                            (90, 0, [0, 30, 60]), (100, 29.97, [0, 29, 59]), (5, 0.5, [0, 1, 2, 3, 4])])
def test_one_fps_indices_table(n, src, expected):
    assert F.one_fps_indices(n, src) == expected


@settings(deadline=None)
@given(n=st.integers(0, 3000), src=st.one_of(st.just(0.0), st.floats(0.2, 120)), fps=st.sampled_from([1.0, 2.0, 0.5]))
def test_one_fps_indices_equals_rule(n, src, fps):
    assert F.one_fps_indices(n, src, fps) == reference_indices(n, src, fps)


def test_uniform_subsample():
    items = list(range(120))
    picked = F.uniform_subsample(items, 50)
    assert len(picked) == 50 and picked[0] == 0 and picked[-1] == 119
    assert picked == [int(x) for x in np.linspace(0, 119, 50)]
    assert F.uniform_subsample(items[:50], 50) == items[:50]


@pytest.fixture
def video(tmp_path):
    """8 frames at 4 fps (2 s): frames 0 and 4 at 1 fps."""
    images = moving_square_frames(8, 64, 64, "right", step=5)
    return write_mp4(tmp_path / "clip.mp4", images, fps=4), images


def test_decode_samples_one_fps(video):
    path, images = video
    decoded = F.decode_video_frames(path)
    assert len(decoded) == 2
    for got, src in zip(decoded, [images[0], images[4]]):
        assert np.abs(got.astype(int) - np.asarray(src).astype(int)).mean() < 12  # lossy codec, same frame


def test_backends_agree(video):
    path, _ = video
    pyav = F._decode_pyav(path, 1.0)
    opencv = F._decode_opencv(path, 1.0)
    assert len(pyav) == len(opencv) == 2
    assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 3 for a, b in zip(pyav, opencv))


def test_corrupt_and_missing_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 10)
    with pytest.raises(F.VideoDecodeError, match="cannot decode .*bad.mp4"):
        F.decode_video_frames(bad)
    cache = F.FrameCache(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="video not found"):
        cache.frame_paths(tmp_path / "none.mp4")
    with pytest.raises(F.VideoDecodeError):
        cache.frame_paths(bad)
    assert not any((tmp_path / "cache").glob("*/frame_*.jpg"))  # nothing half-written


def test_cache_second_run_does_not_decode(video, tmp_path):
    path, _ = video
    first = F.FrameCache(tmp_path / "cache")
    files = first.frame_paths(path)
    assert (first.decoded, first.hits, len(files)) == (1, 0, 2)
    mtimes = [f.stat().st_mtime_ns for f in files]
    frames_first = [np.asarray(im) for im in F.load_video_frames(path, first)]

    second = F.FrameCache(tmp_path / "cache")  # a new run, same cache root
    frames_second = [np.asarray(im) for im in F.load_video_frames(path, second)]
    assert (second.decoded, second.hits) == (0, 1)
    assert [f.stat().st_mtime_ns for f in second.frame_paths(path)] == mtimes
    assert all((a == b).all() for a, b in zip(frames_first, frames_second))  # identical pixels, via JPEG both times

    # The key covers fps and the file's mtime: a changed video is decoded again.
    other_fps = F.FrameCache(tmp_path / "cache", fps=2.0)
    assert len(other_fps.frame_paths(path)) == 4 and other_fps.decoded == 1
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = F.FrameCache(tmp_path / "cache")
    third.frame_paths(path)
    assert third.decoded == 1


def test_cache_decodes_once_under_concurrency(video, tmp_path):
    path, _ = video
    cache = F.FrameCache(tmp_path / "cache")
    results, barrier = [], threading.Barrier(6)

    def ask():
        barrier.wait()
        results.append(cache.frame_paths(path))

    threads = [threading.Thread(target=ask) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.decoded == 1 and cache.hits == 5
    assert all(r == results[0] for r in results)


def test_write_frames_keep_existing(tmp_path):
    a = [np.zeros((8, 8, 3), np.uint8)]
    b = [np.full((8, 8, 3), 255, np.uint8)] * 2
    F.write_frames(a, tmp_path / "f")
    kept = F.write_frames(b, tmp_path / "f", replace=False)
    assert len(kept) == 1  # another writer's finished folder is not replaced
    assert len(F.write_frames(b, tmp_path / "f")) == 2  # the default replaces
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_load_video_frames_caps_count(tmp_path):
    path = write_mp4(tmp_path / "long.mp4", moving_square_frames(6, 32, 32), fps=1)
    assert len(F.load_video_frames(path, F.FrameCache(tmp_path / "c"))) == 6
    assert len(F.load_video_frames(path, F.FrameCache(tmp_path / "c"), max_frames=4)) == 4


def test_prefetch_keeps_input_order_and_yields_errors():
    def work(i):
        time.sleep(0.002 * (10 - i))  # later items finish first
        if i == 3:
            raise ValueError("boom")
        return i * i

    out = list(F.prefetch_ordered(work, range(10), num_workers=4))
    assert [p.item for p in out] == list(range(10))
    assert [p.value for p in out if p.error is None] == [i * i for i in range(10) if i != 3]
    assert isinstance(out[3].error, ValueError)
    inline = list(F.prefetch_ordered(work, range(10), num_workers=0))
    assert [(p.item, p.value) for p in inline] == [(p.item, p.value) for p in out]


def test_prefetch_bounded_lookahead():
    started = []
    lock = threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        return i

    consumed = 0
    for _p in F.prefetch_ordered(work, range(40), num_workers=2, max_ahead=5):
        time.sleep(0.001)
        consumed += 1
        with lock:
            assert len(started) <= consumed + 5  # never more than max_ahead ahead of the consumer
    assert consumed == 40


def test_prefetch_stops_early():
    calls = []
    gen = F.prefetch_ordered(lambda i: calls.append(i) or i, range(1000), num_workers=2, max_ahead=4)
    assert next(gen).item == 0
    gen.close()
    time.sleep(0.05)
    assert len(calls) < 20  # the rest was never submitted
