#!/usr/bin/env bash
# What srun starts once per node of a SLURM job (see scripts/slurm/*.sbatch): takes NNODES from
# SLURM_NNODES, NODE_RANK from SLURM_NODEID, MASTER_ADDR from the first host of SLURM_JOB_NODELIST,
# MASTER_PORT from the job id and NUM_GPUS from SLURM_GPUS_ON_NODE (each unless already set), then
# runs the stage launcher with the given flags.
#
#   srun --ntasks-per-node=1 bash scripts/slurm/on_node.sh dift/train.sh [dift.train flags]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LAUNCH_NAME="scripts/slurm/on_node.sh"
source "$ROOT/scripts/launch_common.sh"
(($#)) || launch_usage_error "usage: on_node.sh STAGE_LAUNCHER [flags...] (e.g. dift/train.sh)"
launcher="$1"
shift
[[ "$launcher" = /* ]] || launcher="$ROOT/$launcher"
[ -f "$launcher" ] || launch_usage_error "no launcher $launcher"
slurm_layout
exec bash "$launcher" "$@"
