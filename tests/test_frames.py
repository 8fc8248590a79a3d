"""The frame module: the 1 fps index rule, uniform sub-sampling, decoding backends (their order and
agreement), truncated / corrupt / missing videos, the on-disk cache (a second run does not decode;
only the sampled frames, as JPEG quality 75; memory and disk bounded by the frames sampled, not the
video's length), and the ordered prefetcher."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from dift.core import frames as F
from scripts.make_demo_benchmark import build_benchmark
from scripts.synthetic_media import background, moving_square_frames, write_mp4

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ("decord", "pyav", "opencv")  # the original's order (PyAV standing in for its ffmpeg CLI)


def installed(backend: str) -> bool:
    return importlib.util.find_spec({"decord": "decord", "pyav": "av", "opencv": "cv2"}[backend]) is not None


def jpeg_roundtrip(frame: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


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


def test_backend_order():
    """decord first when installed, then PyAV, then OpenCV (the original's order)."""
    assert F.available_backends() == [b for b in BACKENDS if installed(b)]
    assert F.available_backends()[:2] in (["decord", "pyav"], ["pyav", "opencv"])


def test_decord_is_tried_first_when_installed(video):
    pytest.importorskip("decord")
    path, _ = video
    assert F.available_backends()[0] == "decord"
    default = F.decode_video_frames(path)
    assert all((a == b).all() for a, b in zip(default, F.decode_video_frames(path, backend="decord")))


@pytest.fixture(scope="module")
def demo_videos(tmp_path_factory):
    """The demo benchmark's videos (8 frames at 1 fps, as scripts/demo.sh makes them), the bench
    script's (16 at 4 fps), and rates where the 1 fps rule drops and clamps (95 at 30 fps, 7 at 3 fps)."""
    root = tmp_path_factory.mktemp("demo")
    videos = sorted((build_benchmark(root / "demo", per_type=1) / "videos").glob("*.mp4"))[:3]
    videos += sorted((build_benchmark(root / "bench", per_type=1, frames=16) / "videos").glob("*.mp4"))[:2]
    videos.append(write_mp4(root / "n95_30fps.mp4", moving_square_frames(95, 64, 48, "down", step=1), fps=30))
    videos.append(write_mp4(root / "n7_3fps.mp4", moving_square_frames(7, 64, 48, "left", step=4), fps=3))
    return videos


@pytest.mark.parametrize("backend", ["decord", "opencv"])
def test_backends_agree_with_pyav(demo_videos, backend):
    """Every backend reads the same frame count and fps, so the same 1 fps indices, and decodes the
    same frames (up to colour conversion rounding)."""
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    for path in demo_videos:
        ref, info = F.probe_video(path, "pyav"), F.probe_video(path, backend)
        assert (info.num_frames, info.source_fps) == (ref.num_frames, ref.source_fps), path.name
        assert F.sample_indices(info.num_frames, info.source_fps) == F.sample_indices(ref.num_frames, ref.source_fps)
        expected = F.decode_video_frames(path, backend="pyav")
        got = F.decode_video_frames(path, backend=backend)
        assert len(got) == len(expected) == len(F.one_fps_indices(ref.num_frames, ref.source_fps))
        assert all(np.abs(a.astype(int) - b.astype(int)).mean() < 3 for a, b in zip(got, expected)), path.name
    frames_95 = F.probe_video(demo_videos[-2], "pyav")
    assert (frames_95.num_frames, frames_95.source_fps) == (95, 30.0)  # the probe is not vacuous


def test_a_backend_that_fails_hands_over_to_the_next(tmp_path):
    """decord 0.6 returns 48x48 frames with 4 channels: refused, PyAV decodes the video instead."""
    pytest.importorskip("decord")
    path = write_mp4(tmp_path / "v48.mp4", moving_square_frames(7, 48, 48, "left", step=4), fps=3)
    with pytest.raises(F.VideoDecodeError, match="decord: decord returned frame 0 with shape"):
        F.decode_video_frames(path, backend="decord")
    default = F.decode_video_frames(path)
    assert all((a == b).all() for a, b in zip(default, F.decode_video_frames(path, backend="pyav")))
    assert [f.shape for f in default] == [(48, 48, 3)] * 2
    files = F.FrameCache(tmp_path / "cache").frame_paths(path)  # a part-written attempt is started afresh
    assert [f.name for f in files] == ["frame_0000.jpg", "frame_0001.jpg"]


# ---------------------------------------------------------------------------------------------
# Truncated, corrupt, empty, missing


@pytest.fixture
def faststart_video(tmp_path):
    """6 s at 5 fps with the index at the front: a copy cut before its end still opens."""
    return write_mp4(tmp_path / "whole.mp4", moving_square_frames(30, 64, 64, "right", step=1), fps=5, faststart=True)


def packet_end(path, n: int) -> int:
    """The byte offset where the n-th video packet ends (a cut there leaves whole packets only)."""
    import av

    with av.open(str(path)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[n - 1]
    return pos + size


def cut_copies(path, tmp_path):
    data = path.read_bytes()
    mid_packet, on_boundary = tmp_path / "cut_mid.mp4", tmp_path / "cut_boundary.mp4"
    mid_packet.write_bytes(data[:len(data) * 6 // 10])
    on_boundary.write_bytes(data[:packet_end(path, 17)])  # 17 of 30 frames: the decoder stops silently
    return [mid_packet, on_boundary]


def assert_one_line_naming(err: Exception, path, *words):
    message = str(err)
    assert "\n" not in message and str(path) in message, message
    assert all(w in message for w in words), message


def test_truncated_video_is_an_error(faststart_video, tmp_path):
    """A video cut before its end (index at the front) is a VideoDecodeError for every backend and
    for the cache, never the last good frame repeated or fewer frames; the whole file decodes."""
    assert len(F.decode_video_frames(faststart_video)) == 6
    for cut in cut_copies(faststart_video, tmp_path):
        for backend in F.available_backends():
            with pytest.raises(F.VideoDecodeError) as info:
                F.decode_video_frames(cut, backend=backend)
            assert_one_line_naming(info.value, cut, backend, "truncated or corrupt")
        with pytest.raises(F.VideoDecodeError) as info:
            F.decode_video_frames(cut)
        assert_one_line_naming(info.value, cut, "truncated or corrupt")
        cache = F.FrameCache(tmp_path / "cache")
        with pytest.raises(F.VideoDecodeError):
            cache.frame_paths(cut)
        assert not list((tmp_path / "cache").iterdir())  # no folder, no temp folder left behind
    with pytest.raises(F.VideoDecodeError, match="lists 30 frames, the decoder delivered 17"):
        F.decode_video_frames(tmp_path / "cut_boundary.mp4", backend="pyav")


def test_corrupt_empty_and_missing_video(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 10)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for path in (bad, empty):
        with pytest.raises(F.VideoDecodeError) as info:
            F.decode_video_frames(path)
        assert_one_line_naming(info.value, path, "cannot decode")
    assert "empty file" in str(info.value)
    cache = F.FrameCache(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match="video not found"):
        cache.frame_paths(tmp_path / "none.mp4")
    with pytest.raises(F.VideoDecodeError):
        cache.frame_paths(bad)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())  # nothing half-written


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
    F.write_frames(a, tmp_path / "f", quality=75)
    kept = F.write_frames(b, tmp_path / "f", quality=75, replace=False)
    assert len(kept) == 1  # another writer's finished folder is not replaced
    assert len(F.write_frames(b, tmp_path / "f", quality=75)) == 2  # the default replaces
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_write_frames_quality_and_iterators(tmp_path):
    """The caller's quality reaches the files; frames may stream in; a stream that fails part-way
    or holds nothing leaves nothing behind."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 48, 3), dtype=np.uint8) for _ in range(3)]
    for quality in (75, 95):
        files = F.write_frames(iter(frames), tmp_path / f"q{quality}", quality=quality)
        assert all((np.asarray(Image.open(f)) == jpeg_roundtrip(x, quality)).all() for f, x in zip(files, frames))
    assert (tmp_path / "q75" / "frame_0000.jpg").stat().st_size < (tmp_path / "q95" / "frame_0000.jpg").stat().st_size

    def failing():
        yield frames[0]
        raise F.VideoDecodeError("cut")

    with pytest.raises(F.VideoDecodeError):
        F.write_frames(failing(), tmp_path / "failed", quality=75)
    with pytest.raises(ValueError, match="no frames"):
        F.write_frames([], tmp_path / "none", quality=75)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q75", "q95"]


def test_load_video_frames_caps_count(tmp_path):
    path = write_mp4(tmp_path / "long.mp4", moving_square_frames(6, 32, 32), fps=1)
    assert len(F.load_video_frames(path, F.FrameCache(tmp_path / "c"))) == 6
    assert len(F.load_video_frames(path, F.FrameCache(tmp_path / "c"), max_frames=4)) == 4


def test_cache_keeps_each_callers_sampling(tmp_path):
    """The cache stores only the frames a request can use, keyed by its sampling: RL's 16 and
    evaluation's 50 of one video get separate folders, each holding exactly today's rule's frames
    (uniform_subsample over every 1 fps frame) as JPEG quality 75."""
    path = write_mp4(tmp_path / "v.mp4", moving_square_frames(63, 48, 48, "right", step=1), fps=1)
    every = F.decode_video_frames(path)
    assert len(every) == 63
    cache = F.FrameCache(tmp_path / "cache")
    for max_frames in (16, 50, 16):
        files = cache.frame_paths(path, max_frames)
        expected = [jpeg_roundtrip(x, F.CACHE_JPEG_QUALITY) for x in F.uniform_subsample(every, max_frames)]
        assert len(files) == max_frames
        assert all((np.asarray(Image.open(f)) == e).all() for f, e in zip(files, expected))
    assert (cache.decoded, cache.hits) == (2, 1)
    assert len(list((tmp_path / "cache").iterdir())) == 2
    assert cache.key(path, 16) != cache.key(path, 50)
    assert len(cache.frame_paths(path, None)) == 63  # None: every 1 fps frame
    loaded = F.load_video_frames(path, cache)
    assert [np.asarray(im).tolist() for im in loaded] == [np.asarray(Image.open(f)).tolist()
                                                          for f in cache.frame_paths(path, F.MAX_FRAMES)]


# ---------------------------------------------------------------------------------------------
# Memory and disk bounded by the frames sampled, not by the video's length

EXTRACT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from dift.core import frames as F
    video, out, backend = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    F.decode_with_fallback(video, lambda fr: F.write_frames(fr, out, quality=F.CACHE_JPEG_QUALITY),
                           max_frames=F.MAX_FRAMES, backends=[backend])
    status = Path("/proc/self/status")
    if status.is_file():  # this process's own peak (ru_maxrss can include the parent's, via exec)
        peak_kib = next(int(x.split()[1]) for x in status.read_text().splitlines() if x.startswith("VmHWM"))
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    files = sorted(out.glob("frame_*.jpg"))
    print(json.dumps({"peak_mib": peak_kib / 1024, "files": len(files), "bytes": sum(f.stat().st_size for f in files)}))
""")


def panning_frames(n: int, width: int = 320, height: int = 240):
    """n frames of a textured background panning right, made one at a time."""
    bg = background(width, height, seed=1)
    return (Image.fromarray(np.roll(bg, 3 * i, axis=1)) for i in range(n))


@pytest.fixture(scope="module")
def short_and_long(tmp_path_factory):
    """1 and 10 minutes at 2 fps, 320x240: every 1 fps frame of the long one would take 138 MB."""
    root = tmp_path_factory.mktemp("lengths")
    return (write_mp4(root / "one_minute.mp4", panning_frames(120), fps=2),
            write_mp4(root / "ten_minutes.mp4", panning_frames(1200), fps=2))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_extraction_memory_and_cache_bounded_by_frames_sampled(short_and_long, tmp_path, backend):
    if not installed(backend):
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for video in short_and_long:
        done = subprocess.run([sys.executable, "-c", EXTRACT, str(video), str(tmp_path / video.stem), backend],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    short, long = runs
    assert short["files"] == long["files"] == F.MAX_FRAMES
    assert long["peak_mib"] - short["peak_mib"] < 40, runs  # all 600 frames held would add ~130 MiB
    assert long["bytes"] < 1.25 * short["bytes"], runs


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
