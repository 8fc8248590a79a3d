# Sourced by every demo stage: the repository root as working folder, PY and WORK (from demo.sh,
# or their defaults when a stage runs alone), and the checkpoints the later stages start from or ask.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PY:-$ROOT/.venv/bin/python}"
WORK="${WORK:-$ROOT/.cache/demo}"

# $DIFT_MODEL if set, else a tiny latent checkpoint built into $WORK/tiny-latent on first use.
dift_model() {
  local model="${DIFT_MODEL:-$WORK/tiny-latent}"
  if [[ -z "${DIFT_MODEL:-}" && ! -f "$model/config.json" ]]; then
    "$PY" scripts/build_tiny_model.py --out "$model" --latent >&2
  fi
  echo "$model"
}

# The checkpoint inference and evaluation ask: $CHECKPOINT if set (demo.sh: the 4DRL one), else dift_model.
asked_model() {
  if [[ -n "${CHECKPOINT:-}" ]]; then echo "$CHECKPOINT"; else dift_model; fi
}
