"""`python -m preprocess <step> [flags]`: run one step of the data engine (`<step> --help` for its flags).

Steps, in order: frames, objects, masks, camera_qa, object_qa, merge, convert, check.
"""

from __future__ import annotations

import importlib
import sys

STEPS = {
    "frames": "preprocess.clip_frames",
    "objects": "preprocess.objects",
    "masks": "preprocess.masks",
    "camera_qa": "preprocess.camera_qa",
    "object_qa": "preprocess.object_qa",
    "merge": "preprocess.merge",
    "convert": "preprocess.convert",
    "check": "preprocess.check",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STEPS:
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown step {argv[0]!r}; steps: {', '.join(STEPS)}", file=sys.stderr)
        print(__doc__, file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    # import only the step's module: the LLM steps need neither torch nor SAM3
    return importlib.import_module(STEPS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
