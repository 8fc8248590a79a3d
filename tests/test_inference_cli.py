"""The single-video inference CLI (`python -m dift.inference`), end to end on the tiny checkpoint."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dift.inference import cli, main
from scripts.synthetic_media import moving_square_frames, write_mp4

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "In which direction does the red square move?\n\nA. Left\nB. Right\nC. Up\nD. Down"


# See conftest.one_torch_thread.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_video_end_to_end_in_a_subprocess(tiny_latent, tmp_path):
    video = write_mp4(tmp_path / "clip.mp4", moving_square_frames(6, direction="right"), fps=2)  # 3 s
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-m", "dift.inference", "--model_path", str(tiny_latent), "--video", str(video),
           "--question", QUESTION, "--cache_dir", str(cache), "--max_new_tokens", "6", "--seed", "7"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see _one_torch_thread
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.rstrip("\n").split("\n")
    assert lines[-1].startswith("Answer: ")
    assert lines[-1].removeprefix("Answer: ") in {"A", "B", "C", "D", "(none)"}
    assert "3 frames" in proc.stderr  # 1 fps of a 3-second clip, given to the model as one video
    assert len(list(cache.glob("frame_cache/*/frame_*.jpg"))) == 3  # decoded once into the frame cache


def test_frame_folder_greedy(tiny_latent, tmp_path, capsys, caplog):
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, frame in enumerate(moving_square_frames(4, direction="up")):
        frame.save(frames_dir / f"frame_{i:04d}.jpg")
    argv = ["--model_path", str(tiny_latent), "--image_dir", str(frames_dir), "--question", QUESTION,
            "--max_new_tokens", "8", "--greedy", "--device", "cpu"]
    with caplog.at_level(logging.INFO, logger="dift.inference"):
        main(argv)
    assert capsys.readouterr().out.rstrip("\n").split("\n")[-1].startswith("Answer: ")
    assert "4 frames" in caplog.text


@pytest.mark.parametrize("case", ["missing_video", "empty_folder", "no_visual", "both_visuals", "missing_model"])
def test_bad_input_is_a_one_line_error(tiny_latent, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    video = write_mp4(tmp_path / "ok.mp4", moving_square_frames(2), fps=1)
    argv = {"missing_video": ["--video", str(tmp_path / "nope.mp4")],
            "empty_folder": ["--image_dir", str(tmp_path / "empty")],
            "no_visual": [],
            "both_visuals": ["--video", str(video), "--image_dir", str(tmp_path / "empty")],
            "missing_model": ["--video", str(video), "--cache_dir", str(tmp_path / "cache")]}[case]
    model = str(tmp_path / "no_model") if case == "missing_model" else str(tiny_latent)
    with pytest.raises(SystemExit) as exit_info:
        cli(["--model_path", model, "--question", "Q?", *argv])
    code, prefix = (1, "python -m dift.inference: failed: ") if case == "empty_folder" else \
        (2, "python -m dift.inference: error: ")
    assert exit_info.value.code == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(prefix), err
    expected = {"missing_video": "--video", "empty_folder": "no frame_*.jpg files in ",
                "no_visual": "exactly one of --video", "both_visuals": "exactly one of --video",
                "missing_model": "no such checkpoint folder"}[case]
    assert expected in err
