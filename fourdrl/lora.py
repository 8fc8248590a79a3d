"""LoRA for 4DRL (the original's optional path, spec fourdrl.md section 6) and merging a LoRA
checkpoint into a full one that `evaluation.dsr_eval` and `dift.inference` load.

- Targets: by default every Linear of the language model (the original's choice: every Linear outside
  the vision tower; the LM head is left out, it is tied to the embeddings), or `--lora_target_modules`.
- The three latent tokens' embedding rows stay trainable (PEFT's trainable tokens; with the tied head
  their output rows too), so the policy can still learn its imagery tokens.
- The reference is the policy with its adapters disabled (TRL's way): no second copy.

    python -m fourdrl.lora --adapter OUT/EXP/checkpoints --out OUT/EXP/merged
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel

from dift.core.checkpoint import load_latent_model, load_processor
from dift.core.cli import require_path, run_cli
from dift.core.logs import setup_logging
from dift.core.tokens import LatentCheckpointError, LatentTokenIds

log = logging.getLogger(__name__)

LANGUAGE_MODEL_PREFIX = "model.language_model."


def language_model_linear_names(model: torch.nn.Module) -> list[str]:
    """The distinct names of the Linear layers of the language model (q_proj, ..., down_proj)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name.startswith(LANGUAGE_MODEL_PREFIX)})


def default_lora_targets(model: torch.nn.Module) -> str:
    """A PEFT target regex: every Linear of the language model (none of the vision tower, not the head)."""
    names = "|".join(map(re.escape, language_model_linear_names(model)))
    return rf"{re.escape(LANGUAGE_MODEL_PREFIX)}.*\.({names})"


def build_lora_config(model_args, model: torch.nn.Module, token_ids: LatentTokenIds) -> LoraConfig:
    """TRL's `ModelConfig` LoRA flags (`--lora_r`, `--lora_alpha`, `--lora_dropout`, `--lora_target_modules`)
    as a `LoraConfig`, with the latent tokens' rows trainable."""
    targets = model_args.lora_target_modules or default_lora_targets(model)
    return LoraConfig(r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
                      target_modules=targets, trainable_token_indices=sorted(token_ids.latent),
                      use_rslora=model_args.use_rslora, use_dora=model_args.use_dora, task_type="CAUSAL_LM")


def merge_lora_checkpoint(adapter_dir: str | Path, out_dir: str | Path, base: str | Path | None = None) -> Path:
    """Write the full model of a LoRA checkpoint (base + merged adapters + the trained latent rows) with
    the processor: a folder `load_latent_model` loads like any DIFT checkpoint."""
    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA checkpoint)")
    base = base or LoraConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(f"{adapter_dir}: base model folder {base!r} not found (pass --base)")
    loaded = load_latent_model(base, dtype="auto")
    merged = PeftModel.from_pretrained(loaded.model, adapter_dir).merge_and_unload()
    # Written into a staging folder renamed into place at the end: `out_dir` is whole or absent.
    if out_dir.exists():
        raise FileExistsError(f"--out {out_dir} already exists (choose a new folder)")
    staging = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    merged.save_pretrained(staging)
    load_processor(adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else base).save_pretrained(staging)
    os.replace(staging, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    """`python -m fourdrl.lora`, with the project's exit codes (dift.core.cli)."""
    parser = argparse.ArgumentParser(prog="python -m fourdrl.lora", description="Merge a 4DRL LoRA checkpoint "
                                     "into a full checkpoint (for evaluation.dsr_eval and dift.inference).")
    parser.add_argument("--adapter", required=True, help="a LoRA checkpoint folder (adapter_config.json)")
    parser.add_argument("--out", required=True, help="folder for the merged checkpoint")
    parser.add_argument("--base", default=None, help="base (DIFT) checkpoint; default: the one the adapter names")
    args = parser.parse_args(argv)  # a bad flag: argparse's usage line and exit 2
    setup_logging()

    def run():
        require_path("--adapter", args.adapter, "dir")
        log.info("merged checkpoint: %s", merge_lora_checkpoint(args.adapter, args.out, args.base))

    run_cli("python -m fourdrl.lora", run, interrupted="--out was not written (the merge writes it whole at the end): "
            "rerun the same command", failures=lambda: (FileNotFoundError, FileExistsError, LatentCheckpointError,
                                                        ValueError))


if __name__ == "__main__":
    main()
