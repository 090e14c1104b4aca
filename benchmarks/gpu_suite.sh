#!/usr/bin/env bash
# The GPU checks and benchmarks in one run (for a lent GPU machine; CI has none).
#
#   benchmarks/gpu_suite.sh OUT_DIR [CHECKPOINT_4x32] [SIDE]
#
# Stages (each under its own time limit, shortened to end by GPU_SUITE_DEADLINE seconds after the start when set;
# logs in OUT_DIR/*.log; a failed stage does not stop the rest):
#   0. machine: nvidia-smi, torch/triton versions
#   1. tests/test_ops_cuda.py: Triton kernels vs the C++ CPU kernels (bitwise), tile independence, gradients,
#      MGN step and torch.compile on CUDA vs CPU, `meshgnn train --device cuda` vs CPU (fp64)
#   2. benchmarks/bench_aggregation.py --device cuda (ours vs index_add / PyG scatter / segment_reduce, tile sweep)
#   3. benchmarks/bench_train_step.py --device cuda at 22^3 (and 40^3 last, if time is left)
#      (ours fp32/tf32/bf16/ckpt/no-concat vs PyG)
#   4. scale, on box_tets(SIDE) (145: 3,048,625 nodes), built on the host CPU while stages 1-3 run:
#      a. `meshgnn partition --method rcb --parts 16 --halo 15`, then one full training step over all 16 patches of
#         MGN 15 x 128 (activation checkpointing per layer, bf16 autocast), 2 steps, `meshgnn train --device cuda`
#      b. `meshgnn rollout --device cuda` of CHECKPOINT_4x32 over 100 steps on the whole graph
# Python: whatever `python3` is (the GPU image's); the repo is put on PYTHONPATH, nothing is installed.
set -u
OUT=${1:?usage: gpu_suite.sh OUT_DIR [CHECKPOINT] [SIDE]}
CKPT=${2:-}
SIDE=${3:-145}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
WORK=${GPU_SUITE_WORK:-/tmp/gpu_suite}
mkdir -p "$WORK"
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
cd "$HERE"
stamp() { echo "== $(date +%T) $*"; }

DEADLINE=${GPU_SUITE_DEADLINE:-0}   # seconds after the start by which every stage must have ended (0: none)
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  if [ "$DEADLINE" -gt 0 ]; then
    local left=$((DEADLINE - SECONDS - 5))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then stamp "$name skipped: the deadline is near"; return; fi
  fi
  stamp "$name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc in $((SECONDS - t0)) s"
  tail -n 40 "$OUT/$name.log"
}

stamp machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
  nproc; free -g | head -2; } 2>&1 | tee "$OUT/machine.log"

# host-side preparation of the scale stage, in the background while the GPU stages run
(
  set -e
  [ -f "$WORK/box.h5" ] || "$PY" benchmarks/bench_rollout_scale.py dataset "$WORK/box.h5" --side "$SIDE"
  TIME=""; [ -x /usr/bin/time ] && TIME="/usr/bin/time -v"
  [ -f "$WORK/box.P16.parts.h5" ] || $TIME "$PY" -m meshgnn.cli partition "$WORK/box.h5" --parts 16 \
      --method rcb --halo 15 --out "$WORK/box.P16.parts.h5" --quiet
) > "$OUT/prepare.log" 2>&1 &
PREP=$!

stage tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py
stage aggregation 70 "$PY" benchmarks/bench_aggregation.py --device cuda --edges 1e6 3e6 --repeats 20 \
  --tiles 1,128,1 4,128,4 8,128,4 16,128,8 8,64,4 32,32,8
stage train_step22 60 "$PY" benchmarks/bench_train_step.py --device cuda --grid 22 --warmup 2 --repeats 5

stamp "waiting for the host preparation"
wait $PREP; echo "   prepare rc=$?"; tail -n 30 "$OUT/prepare.log"
stage train_scale 170 "$PY" -m meshgnn.cli train "$WORK/box.h5" --parts "$WORK/box.P16.parts.h5" --device cuda \
  --layers 15 --latent 128 --checkpoint-layers true --bf16 true --steps 2 --progress false \
  --out "$WORK/train3m"
cat "$WORK/train3m/train_log.csv" >> "$OUT/train_scale.log" 2>/dev/null
if [ -n "$CKPT" ]; then
  stage rollout_scale 100 "$PY" -m meshgnn.cli rollout "$CKPT" "$WORK/box.h5" --device cuda --steps 100 \
    --every 50 --trajectory 0 --render false --progress false --out "$WORK/roll3m"
  ls -la "$WORK/roll3m" >> "$OUT/rollout_scale.log" 2>&1
fi
stage train_step40 120 "$PY" benchmarks/bench_train_step.py --device cuda --grid 40 --warmup 1 --repeats 3
stamp "all stages done"
