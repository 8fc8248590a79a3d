"""Resumable training checkpoints (the `checkpoint-N` folders the HF Trainer writes): when a folder
is complete, which one a run resumes from, rotation, and loading a folder's weights into the live model.

Shared by the DIFT trainer and 4DRL (which may not import DIFT's training modules).

- Complete: a folder is complete once it holds `COMPLETE_MARKER`, written last (after every rank has
  written its part) by an atomic rename. A folder without it was cut short (the process was killed
  while saving) and is never resumed from; deleting a folder removes the marker first.
- Weights: `save_pretrained` writes the checkpoint key format (`visual.*`, `model.layers.*`), while
  the live Qwen2.5-VL's keys are `model.visual.*`, `model.language_model.*`; `from_pretrained` renames
  through transformers' conversion mapping, but the Trainer's resume (`_load_from_checkpoint`) loads
  the raw keys with `strict=False`, so nothing matched and training silently went on from the base
  weights (transformers issue 43701). `load_checkpoint_weights` renames as `from_pretrained` does and
  refuses any mismatch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import WeightConverter, rename_source_key
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from .tokens import LatentCheckpointError

log = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
_STEP_FOLDER = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N for a folder named checkpoint-N, else None."""
    match = _STEP_FOLDER.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE_MARKER).is_file()


def mark_complete(path: str | os.PathLike, step: int) -> None:
    """Write the marker (temp file + rename: it exists whole or not at all)."""
    path = Path(path)
    temporary = path / f".{COMPLETE_MARKER}.tmp"
    temporary.write_text(json.dumps({"step": step}) + "\n")
    os.replace(temporary, path / COMPLETE_MARKER)


def unmark(path: str | os.PathLike) -> None:
    """Remove the marker: before a folder is rewritten or deleted, it must stop counting as complete."""
    (Path(path) / COMPLETE_MARKER).unlink(missing_ok=True)


def step_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The checkpoint-N folders under `folder`, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def newest_complete_checkpoint(folder: str | os.PathLike) -> tuple[Path | None, list[Path]]:
    """The complete checkpoint with the highest step (None if there is none), and the incomplete
    folders with higher steps that were passed over."""
    newest, passed_over = None, []
    for path in reversed(step_checkpoints(folder)):
        if is_complete_checkpoint(path):
            newest = path
            break
        passed_over.append(path)
    return newest, passed_over[::-1]


def remove_checkpoint(path: str | os.PathLike) -> None:
    unmark(path)  # a deletion cut short must not leave a folder that still looks complete
    shutil.rmtree(path, ignore_errors=True)


def rotate_checkpoints(folder: str | os.PathLike, keep: int | None, newest: str | os.PathLike) -> list[Path]:
    """Keep `newest` and the `keep - 1` complete checkpoints with the highest steps below it; delete
    older complete ones and every incomplete folder below `newest` (leftovers of killed saves).
    `keep` None keeps every complete one. Returns the deleted folders."""
    newest = Path(newest)
    below = [p for p in step_checkpoints(folder) if checkpoint_step(p) < checkpoint_step(newest)]
    complete = [p for p in below if is_complete_checkpoint(p)]
    n_older = len(complete) if keep is None else max(keep - 1, 0)
    kept = set(complete[len(complete) - n_older:])
    deleted = [p for p in below if p not in kept]
    for path in deleted:
        remove_checkpoint(path)
    return deleted


# ---------------------------------------------------------------------------------------------
# Weights


def read_checkpoint_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's safetensors file(s), under their saved names, on the CPU."""
    folder = Path(folder)
    single, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    if single.is_file():
        return load_file(single, device="cpu")
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(load_file(folder / shard, device="cpu"))
        return state
    raise LatentCheckpointError(f"{folder}: no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME}")


def to_model_keys(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Saved names -> the live model's names, through the renaming `from_pretrained` applies."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamed = {}
    for key, tensor in state.items():
        new_key, converter = rename_source_key(key, renamings, converters)
        if converter is not None:  # a tensor conversion (fused/split weights), not just a new name
            raise LatentCheckpointError(f"{source}: weight {key} needs a conversion that resuming does not apply")
        renamed[new_key] = tensor
    return renamed


def _aliases(model: torch.nn.Module) -> dict[str, set[str]]:
    """name -> every name of the same tensor (tied weights: lm_head.weight is the embedding)."""
    names_by_tensor: dict[int, set[str]] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names_by_tensor.setdefault(id(tensor), set()).add(name)
    return {name: names for names in names_by_tensor.values() for name in names}


def load_checkpoint_weights(model: torch.nn.Module, folder: str | os.PathLike) -> int:
    """Load a checkpoint folder's weights into `model` in place; every model tensor must be found
    (a tied one through its twin) and every saved one used. Returns the number of tensors loaded."""
    source = str(folder)
    state = to_model_keys(model, read_checkpoint_weights(folder), source)
    result = model.load_state_dict(state, strict=False)
    aliases = _aliases(model)
    missing = [k for k in result.missing_keys if not (aliases.get(k, {k}) & state.keys())]
    if missing or result.unexpected_keys:
        raise LatentCheckpointError(
            f"{source}: weights do not fit the model: {len(missing)} missing (e.g. {', '.join(missing[:3]) or '-'}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {', '.join(result.unexpected_keys[:3]) or '-'})")
    return len(state)
