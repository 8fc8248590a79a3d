"""Logging for every command: one console format, progress bars that never end up as fragments in
log files, and the one place where third-party chatter that does not concern the user is silenced.

Silenced (and why), all in `quiet_third_party`:
- DeepSpeed's accelerator auto-detection warning ("Setting accelerator to CPU...") and its op-build
  notices: DeepSpeed logs them at import on every process; we pick the accelerator ourselves;
- TRL's "experimental feature" warning for `rollout_func`: we use it on purpose;
- transformers 5's FutureWarnings that `gradient_checkpointing*` and `is_gradient_checkpointing` are renamed `activation_checkpointing*`:
  raised by TRL's and the Trainer's own calls, not by anything the user typed (both names are flags);
- transformers' and huggingface_hub's progress bars (weight loading, shard writing) when stderr is not
  a terminal: in a log file they are carriage-return fragments glued to the next line.
Our own progress bars (`progress`) show on a terminal and stay out of files; the periodic log lines
(running accuracy, training metrics) carry the progress there.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
PROGRESS_ENV = "FOURDTHINKER_PROGRESS"  # 1: progress bars even when stderr is not a terminal


def stderr_is_terminal() -> bool:
    return hasattr(sys.stderr, "isatty") and sys.stderr.isatty()


def show_progress(main_process: bool = True) -> bool:
    """Whether a progress bar should be drawn: on rank 0, on a terminal (or when asked for)."""
    return main_process and (stderr_is_terminal() or os.environ.get(PROGRESS_ENV) == "1")


def quiet_third_party() -> None:
    """Silence the third-party messages listed in the module docstring (idempotent; call before the
    libraries are imported where possible: some speak at import time)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if "DS_ACCELERATOR" not in os.environ:
        try:
            import torch  # noqa: F401  (only if already importable: the accelerator follows CUDA)

            os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            pass
    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning)
    for name in ("DeepSpeed", "deepspeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if not show_progress():
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()


class _CurrentStderrHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever `sys.stderr` is when a record is emitted (tqdm's and the
    tests' redirections swap it; a handler bound to an old stream would write to a closed file)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):  # StreamHandler.__init__ assigns it; the property decides
        pass


def setup_logging(level: int = logging.INFO, rank: int = 0, fmt: str = LOG_FORMAT) -> None:
    """Console logging to stderr in one format (warnings only on ranks other than 0), once."""
    root = logging.getLogger()
    if not any(getattr(h, "_fourdthinker", False) for h in root.handlers):
        handler = _CurrentStderrHandler()
        handler.setFormatter(logging.Formatter(fmt, datefmt=DATE_FORMAT))
        handler._fourdthinker = True
        root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    quiet_third_party()


def require_wandb() -> None:
    """UsageError unless `--report_to wandb` can work: wandb installed, and logged in (an API key in the
    environment or ~/.netrc) or in offline/disabled mode. Asked before the model loads, not after."""
    import importlib.util
    from pathlib import Path

    from .cli import UsageError

    if importlib.util.find_spec("wandb") is None:
        raise UsageError("--report_to wandb: wandb is not installed (pip install 'fourdthinker[wandb]')")
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or os.environ.get("WANDB_API_KEY"):
        return
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return
    raise UsageError("--report_to wandb: not logged in to W&B (run `wandb login`, set WANDB_API_KEY, or "
                     "WANDB_MODE=offline to log locally)")
