"""The command-line conventions every CLI of the project follows: exit codes, one-line errors,
Ctrl-C, flag parsing (the original's names, the Hugging Face names beside them, `--config file.yaml`)
and help that answers before torch is imported.

Exit codes (the same for every command and launcher):
  0  the job did what was asked
  1  the job failed: one line on stderr says why (the last line printed)
  2  usage error: a bad flag or value, named
  130 interrupted (Ctrl-C): one line says what was kept and how to resume

A CLI module keeps its top-level imports light (this module, its argument dataclasses) and imports
torch and the model code inside `main`, so `--help` and usage errors answer in well under a second.
An unexpected exception also ends with one line; `FOURDTHINKER_TRACEBACK=1` prints the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
TRACEBACK_ENV = "FOURDTHINKER_TRACEBACK"


class UsageError(ValueError):
    """A bad flag or flag value (exit 2). The message names the flag."""


class JobFailed(RuntimeError):
    """The job could not do what was asked (exit 1). The message is the one line the user sees."""


def require_path(flag: str, value: str | None, kind: str = "file") -> None:
    """UsageError unless `value` (given for `flag`) is an existing file / folder. kind "model" also
    accepts what looks like a Hub id (`org/name`), which is resolved later."""
    if value is None:
        return
    path = Path(value).expanduser()
    if kind == "model":
        looks_local = value.startswith((".", "/", "~")) or value.count("/") != 1
        if path.is_dir() or not looks_local:
            return
        raise UsageError(f"{flag} {value}: no such checkpoint folder")
    if kind == "dir" and not path.is_dir():
        raise UsageError(f"{flag} {value}: no such folder")
    if kind == "file" and not path.is_file():
        raise UsageError(f"{flag} {value}: no such file")


def one_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help texts with their default appended only where there is one to show (no "(default: )" or
    "(default: None)" noise), and the description's line breaks kept."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default in (None, "", False, argparse.SUPPRESS)
                or not action.option_strings):
            return text
        return f"{text} (default: %(default)s)"


def build_parser(dataclass_types, prog: str, description: str = "", epilog: str | None = None):
    """A `TrlParser` (HfArgumentParser + `--config file.yaml`) with our usage line and help format.

    Fields take HF-name aliases through their metadata (`{"aliases": ["--model_name_or_path"]}`).
    """
    from trl import TrlParser  # light: no torch at import

    return TrlParser(dataclass_types, prog=prog, description=description, epilog=epilog,
                     formatter_class=HelpFormatter)


def add_negative_flag(parser, name: str, help: str | None = None):
    """For a `bool | None` field NAME whose None means "decide for me": `--NAME` alone sets True (HF's
    parser wants a value there) and `--no_NAME` sets False (HF's parser adds it only for default True)."""
    for action in parser._actions:
        if f"--{name}" in action.option_strings:
            action.nargs, action.const = "?", True
    parser.add_argument(f"--no_{name}", action="store_false", dest=name, default=None,
                        help=help or f"the opposite of --{name}")
    return parser


def _alias_map(parser) -> dict[str, str]:
    """Every option name (without dashes) -> its destination, so a YAML config may use any alias."""
    names = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                names[option[2:]] = action.dest
    return names


def _pop_config(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config":
            if i + 1 >= len(argv):
                raise UsageError("--config needs a YAML file")
            path = argv[i + 1]
            del argv[i:i + 2]
            return path
        if arg.startswith("--config="):
            del argv[i]
            return arg.split("=", 1)[1]
    return None


def load_config_file(path: str, parser) -> dict:
    """A YAML config's values keyed by parser destination; one-line errors for a missing file, bad
    YAML, a non-mapping or an unknown key (its `env:` section sets environment variables, as TRL's)."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config: file not found: {path}")
    try:
        config = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{path}{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(f"{path}: expected a mapping of flag names to values, got {type(config).__name__}")
    env = config.pop("env", {}) or {}
    if not isinstance(env, dict):
        raise UsageError(f"{path}: 'env' must be a mapping of variable names to values")
    for key, value in env.items():
        os.environ[str(key)] = str(value)
    names = _alias_map(parser)
    values = {}
    for key, value in config.items():
        dest = names.get(str(key).lstrip("-"))
        if dest is None:
            raise UsageError(f"{path}: unknown key {key!r} (run with --help for the valid names)")
        values[dest] = value
    return values


def parse_cli_args(parser, argv: Sequence[str] | None = None) -> tuple:
    """The dataclasses from `--config file.yaml` (if given) overridden by the command line. A value a
    dataclass refuses (its `__post_init__` raises ValueError) becomes a UsageError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = _pop_config(argv)
    if config_path is not None:
        parser.set_defaults_with_config(**load_config_file(config_path, parser))
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    except UsageError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(one_line(err)) from None
    if remaining:
        # flag names only: the value after a misspelt flag may be a secret (--llm_api_keyy sk-...)
        flags = [a.split("=", 1)[0] for a in remaining if a.startswith("-")]
        what = f"unknown flag(s) {' '.join(flags)}" if flags else f"{len(remaining)} unexpected argument(s)"
        raise UsageError(f"{what} (--help lists the flags)")
    return tuple(parsed)


def run_cli(prog: str, main: Callable[[], object], *, interrupted: str | Callable[[], str] =
            "nothing is lost: rerun the same command to continue",
            failures: Callable[[], tuple[type[BaseException], ...]] = tuple) -> None:
    """Run `main` and exit with the project's exit codes (see the module docstring); an int that
    `main` returns is the exit code, anything else means 0.

    `interrupted`: the line printed after Ctrl-C (what was kept, how to resume). `failures`: returns
    the exception types whose message is a complete one-line reason for exit 1 (data errors of the
    CLI's inputs); a function, so that their (heavy) modules are imported only once something failed.
    """
    try:
        code = main()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        message = interrupted() if callable(interrupted) else interrupted
        print(f"\n{prog}: interrupted: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)
    except UsageError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_USAGE)
    except Exception as err:
        if isinstance(err, (JobFailed, *failures())):
            print(f"{prog}: failed: {one_line(err)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_FAILED)
        # A bug, or a failure nobody anticipated: still one line.
        if os.environ.get(TRACEBACK_ENV):
            traceback.print_exc()
        print(f"{prog}: failed: {type(err).__name__}: {one_line(err)} "
              f"(set {TRACEBACK_ENV}=1 for the traceback)", file=sys.stderr, flush=True)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else EXIT_OK)
