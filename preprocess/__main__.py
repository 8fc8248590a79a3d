"""`python -m preprocess <step> [flags]`: run one step of the data engine (`<step> --help` for its flags).

Steps, in order: frames, objects, masks, camera_qa, object_qa, merge, convert, check.
"""

from __future__ import annotations

import importlib
import logging
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
    module = importlib.import_module(STEPS[argv[0]])
    try:
        return module.main(argv[1:])
    except (ValueError, OSError) as err:
        # bad input (a flag, a missing or malformed file) is one line naming it, not a traceback;
        # --log_level DEBUG still shows the traceback. Per-clip errors never get here: they are
        # recorded in state/<step>/failed.jsonl and the run goes on.
        logging.getLogger("preprocess").debug("%s failed", argv[0], exc_info=True)
        print(f"preprocess {argv[0]}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
