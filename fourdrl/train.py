"""`python -m fourdrl.train`: 4DRL, GRPO with latent imagery from a DIFT checkpoint.

    python -m fourdrl.train --model_name_or_path model/dift/checkpoints --data_path data/rl_data.jsonl [flags]
    python -m fourdrl.train --config configs/fourdrl_3b.yaml [flags that override it]
    bash fourdrl/train.sh [flags]          # torchrun + DeepSpeed ZeRO-2, the original's recipe

Flags: TRL's `GRPOConfig` (`--num_generations`, `--beta`, `--reward_weights`, `--max_completion_length`,
`--per_device_train_batch_size` counted in completions, ...) and `ModelConfig` (`--model_name_or_path`,
`--use_peft`, `--lora_r`, ...) with the original recipe's defaults, plus `--data_path` (several files
joined with `:`), `--reward_funcs accuracy format`, `--skip_bad_records`, `--exp_name`,
`--latent_start_in_loss`, `--no_latent_replay`, `--max_frames`, `--max_frame_side`.
Outputs under OUTPUT_DIR/EXP_NAME/: `checkpoints/checkpoint-N` (every `--save_steps`, all kept, each a
full model + processor + latent config that `evaluation.dsr_eval` and `dift.inference` load; LoRA runs
save adapters: `python -m fourdrl.lora` merges them), the final model in `checkpoints/` itself,
`tensorboard/`, `logs/train.log`. A rerun resumes from the newest checkpoint (as the original);
`--resume_from_checkpoint false` starts over, a path resumes from that checkpoint.
Exit codes: 0 trained, 1 failed (bad data, a checkpoint without the latent tokens), 2 usage error, 130
interrupted (checkpoints kept; rerun to resume). Several processes need DeepSpeed (`--deepspeed`).

This module is the light entry point: `--help` prints the help rendered from the parser, kept in
fourdrl/help.txt (the flags are TRL's `GRPOConfig`, whose import alone takes seconds; a test keeps
the file equal to the live parser's help). Everything heavy is in `fourdrl.recipe`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dift.core.cli import require_path, run_cli

PROG = "python -m fourdrl.train"
DESCRIPTION = __doc__.split("\n\nThis module")[0]
HELP_FILE = Path(__file__).with_name("help.txt")
HELP_WIDTH = 100  # columns the stored help is rendered at
LIVE_HELP_ENV = "FOURDTHINKER_LIVE_HELP"  # set: --help renders from the parser instead of the file


def render_help() -> str:
    """The parser's help at HELP_WIDTH columns (imports TRL and torch)."""
    from .recipe import make_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(HELP_WIDTH)
    try:
        return make_parser().format_help()
    finally:
        if columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = columns


def wants_help(argv: list[str]) -> bool:
    return any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None, parsed: dict | None = None):
    """Parse the flags and train; returns the trainer (after the final model is saved), or 0 after
    `--help`. `parsed` (a dict) receives the parsed settings under "args" before training starts."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_help(argv):
        live = os.environ.get(LIVE_HELP_ENV) or not HELP_FILE.is_file()
        print(render_help() if live else HELP_FILE.read_text(), end="")
        return 0
    from .recipe import parse_args, train  # torch, transformers, TRL: only once a run is asked for

    script_args, args, model_args = parse_args(argv)
    if parsed is not None:
        parsed["args"] = args
    if model_args.model_name_or_path:
        require_path("--model_name_or_path", model_args.model_name_or_path, "model")
    return train(script_args, args, model_args)


def cli(argv: list[str] | None = None) -> None:
    """`python -m fourdrl.train`, with the project's exit codes (dift.core.cli)."""
    parsed = {}

    def run():
        result = main(argv, parsed)
        return result if isinstance(result, int) else 0

    def interrupted() -> str:
        from .recipe import interrupted_message

        return interrupted_message(parsed["args"]) if "args" in parsed else "nothing started"

    def input_errors():
        from dift.core.tokens import LatentCheckpointError

        from .data import RLDataError

        return (RLDataError, LatentCheckpointError, FileNotFoundError)

    run_cli(PROG, run, interrupted=interrupted, failures=input_errors)


if __name__ == "__main__":
    cli()
