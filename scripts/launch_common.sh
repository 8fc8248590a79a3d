# Sourced by the stage launchers (dift/train.sh, evaluation/eval.sh, fourdrl/train.sh) and the SLURM
# files: how a launcher finds Python, spreads its processes over one or several nodes, reads its
# own flags and prints its command. Set ROOT (the repository root) before sourcing.
#
# Multi-node settings, from the environment (defaults: one node, as a plain single-node run):
#   NNODES       nodes in the run (1)
#   NODE_RANK    this node's index, 0 .. NNODES-1 (0)
#   MASTER_ADDR  address of node 0, reachable from every node (needed when NNODES > 1)
#   MASTER_PORT  a free TCP port on node 0 (29500)
#   NUM_GPUS     processes on this node (each launcher sets its default; the world size is
#                NNODES x NUM_GPUS)
# Every node runs the same launcher with the same flags and its own NODE_RANK; outputs go to a
# folder that all nodes share (rank 0 writes checkpoints and results; a rerun resumes from there).

# PY: the interpreter, $PY if set, else the project's .venv, else python3.
launch_python() {
    if [ -z "${PY:-}" ]; then
        if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
    fi
}

launch_usage_error() {
    echo "${LAUNCH_NAME:-launcher}: $*" >&2
    exit 2
}

# Fills in and checks NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (a usage error exits 2).
launch_layout() {
    NNODES="${NNODES:-1}"
    NODE_RANK="${NODE_RANK:-0}"
    MASTER_PORT="${MASTER_PORT:-29500}"
    [[ "$NNODES" =~ ^[1-9][0-9]*$ ]] || launch_usage_error "NNODES must be a positive integer, got '$NNODES'"
    [[ "$NODE_RANK" =~ ^[0-9]+$ ]] && ((NODE_RANK < NNODES)) ||
        launch_usage_error "NODE_RANK must be 0 .. $((NNODES - 1)) (NNODES=$NNODES), got '$NODE_RANK'"
    [[ "$MASTER_PORT" =~ ^[0-9]+$ ]] || launch_usage_error "MASTER_PORT must be a port number, got '$MASTER_PORT'"
    if ((NNODES > 1)) && [ -z "${MASTER_ADDR:-}" ]; then
        launch_usage_error "NNODES=$NNODES needs MASTER_ADDR (the address of node 0)"
    fi
}

# TORCHRUN=(...): the torchrun command that starts NPROC processes on this node. One node without
# MASTER_ADDR: --standalone (a free local port); otherwise the static rendezvous at node 0.
launch_torchrun() {
    local nproc="$1"
    if ((NNODES == 1)) && [ -z "${MASTER_ADDR:-}" ]; then
        TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node="$nproc")
    else
        TORCHRUN=("$PY" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK"
            --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" --nproc_per_node="$nproc")
    fi
}

# One line saying where this node stands, for the launcher's own log.
launch_describe() {
    local nproc="$1" kind="$2"
    if ((NNODES == 1)); then
        echo "1 node, $nproc $kind process(es)"
    else
        echo "node $NODE_RANK of $NNODES (rendezvous $MASTER_ADDR:$MASTER_PORT), $nproc $kind process(es) on this" \
            "node, world size $((NNODES * nproc))"
    fi
}

# The value of the last `--NAME VALUE` or `--NAME=VALUE` among ARGS, else DEFAULT: the launcher reads
# the flags it also needs (where the output goes) from the ones it passes through.
#   flag_value NAME DEFAULT ARGS...
flag_value() {
    local name="$1" value="$2"
    shift 2
    while (($#)); do
        case "$1" in
            "--$name")
                if (($# >= 2)); then value="$2"; shift; fi ;;
            "--$name="*) value="${1#*=}" ;;
        esac
        shift
    done
    printf '%s\n' "$value"
}

# Prints a command, each word shell-quoted, on one line (what DRY_RUN=1 shows).
print_command() {
    local line
    printf -v line '%q ' "$@"
    printf '%s\n' "${line% }"
}

# Builds an embedded default (the CPU launchers' tiny checkpoint and data) with CMD..., unless TARGET
# exists; under DRY_RUN=1 prints the command only ("# first builds: ..."), so a dry run writes nothing.
#   build_once TARGET CMD...
build_once() {
    local target="$1"
    shift
    [ -e "$target" ] && return 0
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "# first builds: $(print_command "$@")"
    else
        "$@"
    fi
}

# ---------------------------------------------------------------------------------------------
# SLURM: one launcher per node, started by srun (scripts/slurm/*.sbatch)

# The job's host names, one a line: `scontrol show hostnames` where SLURM is installed, else our
# own expansion of the compressed list (scripts/slurm/hostlist.py).
slurm_hosts() {
    local list="${SLURM_JOB_NODELIST:?not inside a SLURM job (SLURM_JOB_NODELIST is not set)}"
    if command -v scontrol >/dev/null 2>&1; then
        scontrol show hostnames "$list"
    else
        launch_python
        "$PY" "$ROOT/scripts/slurm/hostlist.py" "$list"
    fi
}

# NNODES, NODE_RANK and MASTER_ADDR (the job's first host) from SLURM's variables in a task that
# srun started; MASTER_PORT derived from the job id (jobs sharing a node get different ports) and
# NUM_GPUS from the GPUs SLURM gave this node, unless set.
slurm_layout() {
    [ -n "${SLURM_NODEID:-}" ] || launch_usage_error "not inside a SLURM task (SLURM_NODEID is not set)"
    local hosts
    hosts="$(slurm_hosts)" || launch_usage_error "cannot expand SLURM_JOB_NODELIST='$SLURM_JOB_NODELIST'"
    export NNODES="${SLURM_NNODES:?SLURM_NNODES is not set}"
    export NODE_RANK="$SLURM_NODEID"
    export MASTER_ADDR="${MASTER_ADDR:-${hosts%%$'\n'*}}"
    export MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 10000))}"
    if [ -z "${NUM_GPUS:-}" ] && [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
        export NUM_GPUS="$SLURM_GPUS_ON_NODE"
    fi
}

# Runs a stage launcher (a path under ROOT) once per node of the job with srun. DRY_RUN=1 prints
# the srun line, then what each node would run (its launcher's DRY_RUN output), and starts nothing.
#   slurm_srun dift/train.sh [flags...]
slurm_srun() {
    local launcher="$1"
    shift
    local nnodes="${SLURM_NNODES:?not inside a SLURM job (SLURM_NNODES is not set)}"
    local srun=(srun --nodes="$nnodes" --ntasks-per-node=1 --kill-on-bad-exit=1
        bash "$ROOT/scripts/slurm/on_node.sh" "$launcher" "$@")
    if [ "${DRY_RUN:-0}" != 1 ]; then
        exec "${srun[@]}"
    fi
    print_command "${srun[@]}"
    local node=0 host
    while IFS= read -r host; do
        echo "# node $node ($host):"
        SLURM_NODEID="$node" SLURMD_NODENAME="$host" bash "$ROOT/scripts/slurm/on_node.sh" "$launcher" "$@" </dev/null
        node=$((node + 1))
    done < <(slurm_hosts | head -n "$nnodes")
}
