#!/usr/bin/env bash
# Fill .devcarry/ (git-ignored) with what benchmarks/gpu_suite.sh's round-2 stages need on the GPU machine, which
# reaches no index: the two accuracy datasets and the wheels of PhysicsNeMo 2.2.2 + the dependencies the GPU image
# lacks (cp312), and meshio for meshgnn. ~40 MB, under the 64 MiB a device call may carry. Needs OpenFOAM here
# (source /usr/share/openfoam/etc/bashrc first) for the OpenFOAM dataset.
#
#   bash benchmarks/gpu_carry.sh && echo /.devcarry/ >> .git/info/exclude
#   then, on the device: STAGES="tests train_step40_pn train_scale accuracy" TESTS_K=low_memory SIDE_PARTS=16 \
#     SCALE_FLAGS="--memory-budget auto --bf16 true" SCALE_LIMIT=240 GPU_SUITE_DEADLINE=570 \
#     DEVCARRY=$PWD/.devcarry bash benchmarks/gpu_suite.sh OUT_DIR "" 210      (carry: .devcarry)
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
D=${1:-$HERE/.devcarry}
PY=${PYTHON:-$HERE/.venv/bin/python}
mkdir -p "$D/whl"
MESHGNN=("$PY" -m meshgnn.cli)
[ -f "$D/column.h5" ] || "${MESHGNN[@]}" generate "$D/column.h5" --nodes 5000 --trajectories 5 --steps 50 --quiet
[ -f "$D/openfoam.h5" ] || "${MESHGNN[@]}" generate "$D/openfoam.h5" --solver openfoam --nodes 4000 \
    --trajectories 5 --steps 100 --velocity-range 0.5 1.5 --quiet
# the GPU image's python is 3.12; these are the packages PhysicsNeMo's MeshGraphNet import needs that it lacks
for w in nvidia-physicsnemo==2.2.2 tensordict==0.15.3 pyvers==0.2.3 nvtx omegaconf antlr4-python3-runtime treelib \
         termcolor meshio; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform manylinux1_x86_64 -d "$D/whl" "$w"
done
du -sh "$D"
