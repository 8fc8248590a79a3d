"""Decoding settings (`SamplingConfig`, every field explicit) and where each field of evaluation and
inference comes from: the command line, else the checkpoint's
generation_config.json (as the original), else off. Light: no torch (CLIs import it before parsing).

The original's evaluation and inference set `temperature`, `top_p` and `max_new_tokens` (and
sampling on) and let transformers take every other field from the checkpoint's generation config;
Qwen2.5-VL's (inherited by DIFT and 4DRL checkpoints) has top_k 1 and repetition_penalty 1.05, so its
"sampling" was greedy decoding with a 1.05 penalty, and that is how the published DSR numbers were
made. `CHECKPOINT_FIELDS` are those inherited fields; a value given on the command line wins.
`mode="flags"` ignores the file (top_k off, penalty 1.0 unless given): true sampling.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

LATENT_ABLATIONS = ("none", "zero", "noise")  # what is fed inside latent blocks: hidden states, zeros, noise


@dataclass
class SamplingConfig:
    """How tokens are chosen. Every field is explicit: the generation loop never reads
    generation_config.json (`resolve_sampling` decides what a CLI takes from it)."""

    max_new_tokens: int = 1024
    do_sample: bool = True  # False = greedy
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.do_sample and not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {self.temperature} (use do_sample=False for greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def logprob_temperature(self) -> float:
        """The T of the reported log-probs log_softmax(logits / T): the sampling temperature, 1 when greedy."""
        return float(self.temperature) if self.do_sample else 1.0


GENERATION_CONFIG_FILE = "generation_config.json"
CHECKPOINT_FIELDS = ("top_k", "repetition_penalty")  # what the original inherited from the file
OFF = {"top_k": 0, "repetition_penalty": 1.0}  # the values that switch them off
MODES = ("checkpoint", "flags")


class GenerationConfigError(ValueError):
    """A generation_config.json that cannot be read."""


def read_checkpoint_defaults(model_path: str | Path) -> dict:
    """The `CHECKPOINT_FIELDS` set in `<model_path>/generation_config.json` ({} if there is no file).

    A field of the wrong type or out of range is a one-line error naming the file and field.
    """
    path = Path(model_path) / GENERATION_CONFIG_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GenerationConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise GenerationConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    found = {}
    for name in CHECKPOINT_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        if name == "top_k":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise GenerationConfigError(f"{path}: field {name}={value!r} is not a valid {name}")
        found[name] = value
    return found


def resolve_sampling(*, max_new_tokens: int, greedy: bool, temperature: float, top_p: float,
                     top_k: int | None, repetition_penalty: float | None, model_path: str | Path | None,
                     mode: str = "checkpoint") -> tuple[SamplingConfig, dict[str, str]]:
    """The effective sampling settings and, per inherited field, where its value came from
    ("command line", the generation_config.json path, or "off")."""
    if mode not in MODES:
        raise ValueError(f"--generation_config must be one of {MODES}, got {mode!r}")
    defaults = read_checkpoint_defaults(model_path) if mode == "checkpoint" and model_path is not None else {}
    given = {"top_k": top_k, "repetition_penalty": repetition_penalty}
    values, sources = {}, {}
    for name in CHECKPOINT_FIELDS:
        if given[name] is not None:
            values[name], sources[name] = given[name], "command line"
        elif name in defaults:
            values[name], sources[name] = defaults[name], str(Path(model_path) / GENERATION_CONFIG_FILE)
        else:
            values[name], sources[name] = OFF[name], "off"
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, do_sample=not greedy, temperature=temperature,
                              top_p=top_p, **values)
    return sampling, sources


def describe(sampling: SamplingConfig, sources: dict[str, str]) -> str:
    """One log line: the effective decoding and where the inherited fields came from."""
    if sampling.do_sample and sampling.top_k == 1:
        kind = "greedy (top_k 1)"
    else:
        kind = f"sampling (temperature {sampling.temperature}, top_p {sampling.top_p})" if sampling.do_sample else "greedy"
    return (f"decoding: {kind}, top_k {sampling.top_k} [{sources['top_k']}], repetition_penalty "
            f"{sampling.repetition_penalty} [{sources['repetition_penalty']}], max_new_tokens {sampling.max_new_tokens}")
