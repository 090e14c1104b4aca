#!/usr/bin/env bash
# The GPU checks and benchmarks in one run (for a lent GPU machine; CI has none).
#
#   [STAGES="tests aggregation ..."] benchmarks/gpu_suite.sh OUT_DIR [CHECKPOINT_4x32] [SIDE]
#   STAGES="tests train_step40_pn train_scale accuracy" TESTS_K=low_memory SIDE_PARTS=16 \
#       SCALE_FLAGS="--memory-budget auto --bf16 true" SCALE_LIMIT=240 GPU_SUITE_DEADLINE=570 \
#       DEVCARRY=$PWD/.devcarry benchmarks/gpu_suite.sh OUT_DIR "" 210   # round 2 (issues 14, 18): carry .devcarry,
#                                                                          # made by benchmarks/gpu_carry.sh
#
# Stages (each under its own time limit, shortened to end by GPU_SUITE_DEADLINE seconds after the start when set;
# logs in OUT_DIR/<stage>.log; a failed stage does not stop the rest). Default: all but layernorm and
# profile_rollout. They run in this order: tests aggregation layernorm profile_rollout train_step40_pn train_step22
# train_scale accuracy rollout_scale train_step40.
#   tests          tests/test_ops_cuda.py: Triton kernels vs the C++ CPU kernels (bitwise), tile independence,
#                  gradients, MGN step and torch.compile on CUDA vs CPU, `meshgnn train --device cuda` vs CPU (fp64)
#   aggregation    benchmarks/bench_aggregation.py --device cuda (ours vs index_add / PyG scatter / segment_reduce,
#                  launch-tile sweep)
#   train_step22   benchmarks/bench_train_step.py --device cuda at 22^3 (ours fp32/tf32/bf16/ckpt/no-concat, PyG)
#   train_scale    on box_tets(SIDE) (145: 3,048,625 nodes), dataset and part store built on the host CPU while the
#                  stages above run: `meshgnn partition --method rcb --parts 16 --halo 15`, then 2 training steps
#                  over all 16 patches of MGN 15 x 128 (checkpointing per layer, bf16), `meshgnn train --device cuda`
#   rollout_scale  `meshgnn rollout --device cuda` of CHECKPOINT_4x32 over 100 steps of the whole SIDE^3 graph
#   train_step40   bench_train_step.py at 40^3 (64,000 nodes), eager and torch.compile'd, fp32/tf32/bf16, ours vs PyG
#   layernorm      benchmarks/bench_layernorm.py: nn.LayerNorm vs meshgnn's LayerNorm on (14M, F) latents
#   profile_rollout  benchmarks/profile_cli.py around a 10-step rollout of CHECKPOINT_4x32 on box_tets(100)
#   accuracy       benchmarks/bench_accuracy.py --device cuda: default, PhysicsNeMo, update_agg, step noise on the
#                  carried column and OpenFOAM datasets ($DEVCARRY/column.h5, openfoam.h5), ACC_BUDGET wall s each
#                  (default auto: what GPU_SUITE_DEADLINE leaves), all 7 runs at once on the one card
#   train_step40_pn  bench_train_step.py at 40^3 on the GPU, ours vs PhysicsNeMo 2.2.2 (fp32 and bf16)
# PhysicsNeMo (stages accuracy, train_step40_pn): its wheel and the few dependencies the GPU image lacks are carried
# in $DEVCARRY/whl and installed into $PNEMO_SITE; benchmarks/physicsnemo_gpu/python runs it there with stand-ins
# for warp-lang (149 MB wheel, over the transfer limit) and s3fs, which MeshGraphNet never calls, and for
# torch-scatter's sum (no wheel for the image's torch; its sum is torch's scatter_add_ on a broadcast index, which
# the stand-in runs the same way). Each PhysicsNeMo info line names the torch_scatter it ran.
# The train_scale stage takes SIDE_PARTS (default 16) parts and SCALE_FLAGS (default: per-layer checkpointing).
# TESTS_K="expr" narrows the tests stage (pytest -k).
# Python: whatever `python3` is (the GPU image's); the repo is put on PYTHONPATH, nothing is installed.
set -u
OUT=${1:?usage: gpu_suite.sh OUT_DIR [CHECKPOINT] [SIDE]}
CKPT=${2:-}
SIDE=${3:-145}
STAGES=${STAGES:-"tests aggregation train_step22 train_scale rollout_scale train_step40"}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
WORK=${GPU_SUITE_WORK:-/tmp/gpu_suite}
mkdir -p "$WORK"
DEVCARRY=${DEVCARRY:-$HERE/.devcarry}
PARTS=${SIDE_PARTS:-16}
SCALE_FLAGS=${SCALE_FLAGS:-"--checkpoint-layers true --bf16 true"}
ACC_BUDGET=${ACC_BUDGET:-auto}   # wall s per accuracy run; auto: what the deadline leaves after ~130 s of overheads
export PNEMO_SITE=${PNEMO_SITE:-/tmp/pnemo_site}
OURS_SITE=/tmp/meshgnn_site     # what meshgnn needs and the image lacks (meshio, for reading .vtu back)
export PYTHONPATH="$HERE:$OURS_SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
cd "$HERE"
stamp() { echo "== $(date +%T) $*"; }
wanted() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

DEADLINE=${GPU_SUITE_DEADLINE:-0}   # seconds after the start by which every stage must have ended (0: none)
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  wanted "$name" || return 0
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

# PhysicsNeMo and meshio from the carried wheels
if wanted accuracy || wanted train_step40_pn; then
  stamp "installing the carried wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$PNEMO_SITE" \
      $(ls "$DEVCARRY"/whl/*.whl | grep -v meshio) 2>&1 | tail -3
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$OURS_SITE" "$DEVCARRY"/whl/meshio*.whl 2>&1 | tail -3
  benchmarks/physicsnemo_gpu/python -c 'import physicsnemo, torch_scatter; from physicsnemo.models.meshgraphnet import MeshGraphNet; print("physicsnemo", physicsnemo.__version__, "torch_scatter", torch_scatter.__version__)' 2>&1 | tail -3
fi

# host-side preparation of the scale stages, in the background while the GPU stages run
PREP=""
if wanted train_scale || wanted rollout_scale; then
  (
    set -e
    [ -f "$WORK/box.h5" ] || "$PY" benchmarks/bench_rollout_scale.py dataset "$WORK/box.h5" --side "$SIDE"
    TIME=""; [ -x /usr/bin/time ] && TIME="/usr/bin/time -v"
    if wanted train_scale; then
      [ -f "$WORK/box.P$PARTS.parts.h5" ] || $TIME "$PY" -m meshgnn.cli partition "$WORK/box.h5" --parts $PARTS \
          --method rcb --halo 15 --out "$WORK/box.P$PARTS.parts.h5" --quiet
    fi
  ) > "$OUT/prepare.log" 2>&1 &
  PREP=$!
fi

stage tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_ops_cuda.py ${TESTS_K:+-k "$TESTS_K"}
stage aggregation 90 "$PY" benchmarks/bench_aggregation.py --device cuda --edges 1e6 3e6 14e6 --repeats 10 \
  --tiles 1,128,1 2,128,2 4,128,4 8,128,4 16,128,8 8,64,4 16,64,8
stage layernorm 60 "$PY" benchmarks/bench_layernorm.py --device cuda --rows 14000000 --widths 32 64 128
if [ -n "$CKPT" ] && wanted profile_rollout; then
  [ -f "$WORK/box100.h5" ] || "$PY" benchmarks/bench_rollout_scale.py dataset "$WORK/box100.h5" --side 100 \
      > /dev/null 2>&1
  stage profile_rollout 90 "$PY" benchmarks/profile_cli.py --top 30 -- rollout "$CKPT" "$WORK/box100.h5" \
    --device cuda --steps 10 --every 100 --trajectory 0 --render false --progress false --out "$WORK/roll100"
fi
stage train_step40_pn 150 "$PY" benchmarks/bench_train_step.py --device cuda --grid 40 --warmup 2 --repeats 5 \
  --configs "ours fp32" "ours bf16" "PhysicsNeMo concat" "PhysicsNeMo concat bf16" \
  --physicsnemo-python "$HERE/benchmarks/physicsnemo_gpu/python"
stage train_step22 60 "$PY" benchmarks/bench_train_step.py --device cuda --grid 22 --warmup 2 --repeats 5 \
  --configs "ours fp32" "ours bf16" "ours fp32 ckpt" "ours fp32 no-concat" PyG "ours tf32" "PyG bf16"

if [ -n "$PREP" ]; then
  stamp "waiting for the host preparation"
  wait "$PREP"; echo "   prepare rc=$?"; tail -n 30 "$OUT/prepare.log"
fi
stage train_scale ${SCALE_LIMIT:-170} "$PY" -m meshgnn.cli train "$WORK/box.h5" --parts "$WORK/box.P$PARTS.parts.h5" \
  --device cuda --layers 15 --latent 128 $SCALE_FLAGS --steps 2 --progress false --checkpoint-every 1000 \
  --val-every 0 --val-rollout 0 --out "$WORK/train3m"
if wanted train_scale; then cat "$WORK/train3m/train_log.csv" >> "$OUT/train_scale.log" 2>/dev/null; fi
if wanted accuracy && [ "$ACC_BUDGET" = auto ]; then
  ACC_BUDGET=$(( DEADLINE > 0 ? DEADLINE - SECONDS - 5 - 130 : 150 ))
  [ "$ACC_BUDGET" -gt 400 ] && ACC_BUDGET=400
  stamp "accuracy budget: $ACC_BUDGET wall s per run"
  [ "$ACC_BUDGET" -lt 45 ] && STAGES=${STAGES/accuracy/}
fi
if wanted accuracy; then
  cp "$DEVCARRY"/column.h5 "$DEVCARRY"/openfoam.h5 "$WORK"/ 2>/dev/null
  stage accuracy $((ACC_BUDGET + 150)) "$PY" benchmarks/bench_accuracy.py --device cuda --budget-wall-s "$ACC_BUDGET" \
    --jobs 7 --configs default physicsnemo update_agg stepnoise_openfoam --work "$WORK/acc" --allocator system \
    --data column="$WORK/column.h5" openfoam="$WORK/openfoam.h5" --plot-prefix "$OUT/accuracy_gpu_" \
    --physicsnemo-python "$HERE/benchmarks/physicsnemo_gpu/python"
  cp "$WORK"/acc/results.md "$OUT"/accuracy_results.md 2>/dev/null
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); [r.pop(k,None) for r in d['results'] for k in ('curve','clamped_curve')]; json.dump(d,open(sys.argv[2],'w'),indent=0,default=float)" "$WORK"/acc/results.json "$OUT"/accuracy_results.json 2>/dev/null
  tail -n 5 "$WORK"/acc/*/*.log > "$OUT"/accuracy_runs_tail.log 2>/dev/null
fi
if [ -n "$CKPT" ]; then
  stage rollout_scale 100 "$PY" -m meshgnn.cli rollout "$CKPT" "$WORK/box.h5" --device cuda --steps 100 \
    --every 50 --trajectory 0 --render false --progress false --out "$WORK/roll3m"
  if wanted rollout_scale; then ls -la "$WORK/roll3m" >> "$OUT/rollout_scale.log" 2>&1; fi
fi
stage train_step40 240 "$PY" benchmarks/bench_train_step.py --device cuda --grid 40 --warmup 2 --repeats 3 \
  --configs "ours fp32" "ours bf16" "ours tf32" PyG "PyG bf16" "ours fp32 compiled" "ours bf16 compiled" \
  "PyG compiled" "PyG bf16 compiled"
stamp "all stages done"
