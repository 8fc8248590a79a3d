"""usage: python -m preprocess <step> [flags]      (python -m preprocess <step> --help: the step's flags)

The data engine, one step at a time (preprocess/run.sh IN OUT SAM3 runs them all in order):

{steps}

Per-clip steps record finished clips in OUT/state/<step>/completed.txt and failed ones, with the
reason, in OUT/state/<step>/failed.jsonl: rerunning the same command continues where it stopped,
and LLM replies already received for an unfinished clip are reused, not paid for again.
Exit codes: 0 done; 1 failed (every clip failed, or more than --max_skip_fraction of them; bad
data); 2 bad flag or value; 130 interrupted (Ctrl-C). The last line printed says why.
"""

from __future__ import annotations

import importlib
import os
import sys

from dift.core.cli import EXIT_INTERRUPTED, UsageError, run_cli

from . import redact
from .arguments import STEPS, parse_step_args, prog

PROG = "python -m preprocess"


def overview() -> str:
    """This module's text with the steps listed, then the output layout (the package's docstring)."""
    import preprocess

    width = max(map(len, STEPS))
    steps = "\n".join(f"    {name:<{width}}  {spec.summary}" for name, spec in STEPS.items())
    package = preprocess.__doc__
    layout = package[package.index("One folder layout"):package.index("Shared plumbing")].rstrip()
    return __doc__.format(steps=steps) + "\n" + layout


def main(argv: list[str] | None = None) -> int:
    """Run one step: `argv` is `[step, flags...]`. Returns the exit code; raises the errors `cli` reports."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    if not argv:
        raise UsageError(f"give a step: {', '.join(STEPS)} (python -m preprocess --help)")
    step, flags = argv[0], argv[1:]
    if step not in STEPS:
        raise UsageError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")
    args = parse_step_args(step, flags)
    module = importlib.import_module(STEPS[step].module)  # the heavy imports, after the flags are read
    return module.run(*args)


def _secret_in_argv(argv: list[str]) -> str | None:
    """The value of --llm_api_key, looked up before parsing so that even a usage error cannot echo it."""
    for i, arg in enumerate(argv):
        if arg.startswith("--llm_api_key="):
            return arg.split("=", 1)[1]
        if arg == "--llm_api_key" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message names the file, line and field at fault: exit 1 with that line."""
    from .records import RecordError

    return (RecordError, FileNotFoundError)


def cli(argv: list[str] | None = None) -> None:
    """`python -m preprocess <step>`, with the project's exit codes (dift.core.cli)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    redact.register(os.environ.get("OPENAI_API_KEY"))
    redact.register(_secret_in_argv(argv))
    redact.guard_streams()
    step = argv[0] if argv and argv[0] in STEPS else None
    interrupted = {"message": "nothing was started; rerun the same command"}

    def run() -> int:
        from .runner import Interrupted

        if step and STEPS[step].per_clip:
            interrupted["message"] = (f"the clips finished before are kept (state/{step}/completed.txt under --out); "
                                      "rerun the same command to continue")
        elif step:
            interrupted["message"] = "nothing was written (each output file is replaced whole); rerun the same command"
        try:
            return main(argv)
        except Interrupted as stop:
            interrupted["message"] = str(stop)
            raise

    try:
        run_cli(prog(step) if step else PROG, run, interrupted=lambda: interrupted["message"], failures=_input_errors)
    except SystemExit as done:
        if done.code == EXIT_INTERRUPTED:
            # Clips in flight run on daemon threads that may be logging; an interpreter shutting down
            # under them can abort. Everything worth keeping is on disk: leave at once.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_INTERRUPTED)
        raise


if __name__ == "__main__":
    cli()
