"""Write a few synthetic clips in SpatialVID's layout, with known object and camera motion: the
data engine's embedded default input.

Out (DIR):
    videos/<group>/<id>.mp4                      a coloured square moving by a known step over a
                                                 textured background that pans by a known step
    annotations/<group>/<id>/indexes.txt         "<seq> <video frame index>": every 2nd source frame
    annotations/<group>/<id>/instructions.json   camera segments "a->b" with SpatialVID move names
                                                 matching the pan (Pan/Truck Left/Right, or Stay)
    annotations/<group>/<id>/caption.json        {"SceneSummary": ...}
    annotations/<group>/<id>/poses.npy, intrinsics.npy   (N, 4, 4) camera-to-world, (N, 4) fx fy cx cy
    truth.json                                   per clip id: object names and motion labels, read by
                                                 scripts/llm_server.py to answer like an oracle

The direction label is the square's motion relative to the scene (its on-screen motion minus the
background's), which is what the engine asks for: the direction after compensating the camera's
own motion.

    python scripts/make_demo_spatialvid.py --out .cache/demo/spatialvid --num_clips 4 --seed 0
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from preprocess.labels import DIRECTIONS, SAME_DISTANCE, STATIONARY  # noqa: E402
from scripts.synthetic_media import DIRECTIONS as SQUARE_STEPS  # noqa: E402
from scripts.synthetic_media import moving_square_frames, write_mp4  # noqa: E402

log = logging.getLogger(__name__)
WIDTH, HEIGHT, SOURCE_FPS = 160, 120, 8
SOURCE_FRAMES, STRIDE = 24, 2  # 3 s of video; every 2nd frame annotated -> 12 frames, 0.25 s apart
SQUARE_STEP = 3  # px per source frame, on screen
CAMERA_STEP = 1  # px per source frame the background shifts in a pan: slower than the square, so the
                 # square's own direction stays its direction in the scene
COLORS = {"red": (220, 40, 40), "yellow": (230, 210, 30), "green": (40, 200, 60), "blue": (40, 80, 230)}
# the 8 directions counter-clockwise from +x (y up), as the engine's exact labels
SECTOR_LABELS = ("Moving Right", "Moving Right-Up", "Moving Up", "Moving Left-Up", "Moving Left",
                 "Moving Left-Down", "Moving Down", "Moving Right-Down")
assert set(SECTOR_LABELS) <= set(DIRECTIONS)


def scene_direction(direction: str, camera_dx: int, step: int = SQUARE_STEP) -> str:
    """The square's direction relative to the scene, as the nearest of the 8 labels.

    On screen the square moves `step` px a frame along `direction` and the background moves
    `-camera_dx` px a frame, so relative to the scene the square moves (dx*step + camera_dx, dy*step):
    a square drifting left on screen while the camera pans right faster is moving right in the scene.
    """
    dx, dy = SQUARE_STEPS[direction]
    vx, vy = dx * step + camera_dx, dy * step
    if vx == 0 and vy == 0:
        return STATIONARY
    angle = math.degrees(math.atan2(-vy, vx))  # image y grows downwards
    return SECTOR_LABELS[round(angle / 45) % 8]


def camera_moves(camera_dx: int) -> tuple[list[str], list[str]]:
    """SpatialVID moves of the two segments: content shifts left when the camera pans right."""
    if camera_dx > 0:
        return ["Pan Right"], ["Pan Right", "Truck Right"]
    if camera_dx < 0:
        return ["Pan Left"], ["Pan Left", "Truck Left"]
    return ["Stay"], ["Stay"]


def write_clip(root: Path, group: str, clip_id: str, direction: str, color: str, camera_dx: int, seed: int) -> dict:
    frames = moving_square_frames(SOURCE_FRAMES, WIDTH, HEIGHT, direction, step=SQUARE_STEP, size=22,
                                  color=COLORS[color], camera_dx=camera_dx, seed=seed)
    label = scene_direction(direction, camera_dx)
    write_mp4(root / "videos" / group / f"{clip_id}.mp4", frames, fps=SOURCE_FPS)
    ann = root / "annotations" / group / clip_id
    ann.mkdir(parents=True, exist_ok=True)
    n = SOURCE_FRAMES // STRIDE
    (ann / "indexes.txt").write_text("# seq video_frame_index\n" + "".join(f"{s} {s * STRIDE}\n" for s in range(n)))
    first, second = camera_moves(camera_dx)
    mid = n // 2
    (ann / "instructions.json").write_text(json.dumps({f"0->{mid}": first, f"{mid}->{n - 1}": second}, indent=1))
    motion = "stays still" if camera_dx == 0 else f"pans {'right' if camera_dx > 0 else 'left'}"
    (ann / "caption.json").write_text(json.dumps({
        "SceneSummary": f"A {color} square {label.lower()} across a textured background while the camera {motion}."}))
    yaw = np.deg2rad(np.arange(n) * camera_dx * STRIDE * 0.5)  # a small yaw per annotated frame
    poses = np.tile(np.eye(4), (n, 1, 1))
    poses[:, 0, 0], poses[:, 0, 2], poses[:, 2, 0], poses[:, 2, 2] = np.cos(yaw), np.sin(yaw), -np.sin(yaw), np.cos(yaw)
    np.save(ann / "poses.npy", poses.astype(np.float32))
    np.save(ann / "intrinsics.npy", np.tile([[WIDTH, WIDTH, WIDTH / 2, HEIGHT / 2]], (n, 1)).astype(np.float32))
    return {"dynamic_object": f"{color} square", "static_object": "textured background",
            "direction": label, "distance": SAME_DISTANCE,
            "speed": "Maintaining a Constant Speed" if label != STATIONARY else "Moving at Varying Speeds",
            "camera": {"first": first, "second": second}}


def make_demo(out: str | Path, num_clips: int = 4, seed: int = 0) -> Path:
    """Write `num_clips` clips (two groups) and truth.json into `out`; returns `out`."""
    root = Path(out)
    rng = random.Random(seed)
    directions = [d for d in SQUARE_STEPS if d not in ("stationary", "left-up")]
    rng.shuffle(directions)
    directions.insert(0, "left-up")  # a diagonal in every demo, whatever the seed
    truth = {}
    for i in range(num_clips):
        group = f"group_{i % 2:04d}"
        clip_id = f"demo{seed}_{i:03d}"
        direction = directions[i % len(directions)]
        color = list(COLORS)[i % len(COLORS)]
        camera_dx = (CAMERA_STEP, -CAMERA_STEP, 0)[i % 3]
        truth[clip_id] = write_clip(root, group, clip_id, direction, color, camera_dx, seed * 1000 + i)
    (root / "truth.json").write_text(json.dumps(truth, indent=1))
    log.info("%d synthetic SpatialVID clips in %s", num_clips, root)
    return root


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--num_clips", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_demo(args.out, args.num_clips, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
