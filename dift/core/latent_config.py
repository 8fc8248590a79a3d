"""The latent-imagery fields saved in a DIFT checkpoint's config.json, and reading them back.

They are plain attributes on the upstream `Qwen2_5_VLConfig` (which keeps unknown fields through
save/load) rather than a config subclass with defaults: a base Qwen checkpoint must stay
distinguishable from a DIFT one, so a missing field is an error, not a silent default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .tokens import LatentCheckpointError

COMPRESS_STRATEGIES = ("average", "truncate")
# The original's defaults (spec model_and_dift.md section 1).
DEFAULTS = dict(latent_size=4, compress_strategy="average", stage="stage1", ce_loss_weight=0.1, sim_loss_weight=1.0)
TOKEN_FIELDS = ("latent_token_id", "latent_start_id", "latent_end_id")


@dataclass(frozen=True)
class LatentSettings:
    latent_size: int  # latent vectors per imagined (helper) image
    compress_strategy: str  # how helper-image features become latent_size vectors: average | truncate
    stage: str
    ce_loss_weight: float
    sim_loss_weight: float
    latent_token_id: int
    latent_start_id: int
    latent_end_id: int

    def __post_init__(self):
        if int(self.latent_size) < 1:
            raise LatentCheckpointError(f"latent_size must be >= 1, got {self.latent_size}")


def set_latent_config(config, **overrides) -> None:
    """Write the latent fields onto `config` (defaults for those not given and not already set)."""
    unknown = set(overrides) - set(DEFAULTS) - set(TOKEN_FIELDS)
    if unknown:
        raise TypeError(f"unknown latent config fields: {sorted(unknown)}")
    for key, default in DEFAULTS.items():
        value = overrides.get(key)
        if value is None:
            value = getattr(config, key, None)
        setattr(config, key, default if value is None else value)
    for key in TOKEN_FIELDS:
        if overrides.get(key) is not None:
            setattr(config, key, int(overrides[key]))
    if config.compress_strategy not in COMPRESS_STRATEGIES:
        # The original sends any unknown value to its truncate branch; we refuse instead.
        raise LatentCheckpointError(
            f"compress_strategy {config.compress_strategy!r} is not one of {COMPRESS_STRATEGIES}")


def read_latent_config(config, source: str = "config") -> LatentSettings:
    """The latent fields of a DIFT config; a one-line error naming what is missing."""
    missing = [k for k in (*DEFAULTS, *TOKEN_FIELDS) if getattr(config, k, None) is None]
    if missing:
        raise LatentCheckpointError(
            f"{source}: config has no latent field(s) {', '.join(missing)} (not a DIFT checkpoint? "
            "a base model gets them from `python -m dift.train`)")
    return LatentSettings(**{k: getattr(config, k) for k in (*DEFAULTS, *TOKEN_FIELDS)})


def latent_settings_dict(config) -> dict:
    return asdict(read_latent_config(config))
