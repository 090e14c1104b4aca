"""Check that PhysicsNeMo through the stand-ins (./standins: warp, s3fs; ./scatter_native: torch_scatter's sum)
trains and predicts exactly as a full install does: the accuracy worker (benchmarks/bench_accuracy_physicsnemo.py)
is driven with the same messages in a real PhysicsNeMo venv twice, once with the stand-ins first on its path;
the 5 training losses and the final forward output must be bitwise equal.

    .venv/bin/python benchmarks/physicsnemo_gpu/check_standins.py --real-python /tmp/pnemo-venv/bin/python
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE.parent / "bench_accuracy_physicsnemo.py"
sys.path.insert(0, str(HERE.parent))
from bench_accuracy_physicsnemo import read_message, write_message  # noqa: E402


def drive(cmd: list[str], env: dict, arrays: dict, steps: int = 5):
    """(info, losses, output) of ``steps`` training steps and one forward of the worker run by ``cmd``."""
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    a = arrays
    write_message(p.stdin, {"cmd": "init", "node_in": a["x"].shape[1], "edge_in": a["e"].shape[1],
                            "node_out": a["t"].shape[1], "latent": 32, "layers": 4, "hidden_layers": 2, "seed": 0,
                            "threads": 1, "num_nodes": a["x"].shape[0]}, [a["s"], a["r"]])
    info = read_message(p.stdout)[0]
    losses = []
    for _ in range(steps):
        write_message(p.stdin, {"cmd": "step", "lr": 1e-3, "clip": 1.0, "batch": 1}, [a["e"], a["x"], a["t"], a["m"]])
        losses.append(read_message(p.stdout)[0]["loss"])
    write_message(p.stdin, {"cmd": "forward"}, [a["x"], a["e"]])
    out = read_message(p.stdout)[1][0]
    write_message(p.stdin, {"cmd": "quit"})
    p.wait()
    return info, losses, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-python", required=True, help="python of a venv with PhysicsNeMo, warp, torch-scatter")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, e = 300, 2400
    arrays = dict(s=rng.integers(0, n, e), r=np.sort(rng.integers(0, n, e)),
                  x=rng.standard_normal((n, 9)).astype(np.float32), e=rng.standard_normal((e, 4)).astype(np.float32),
                  t=rng.standard_normal((n, 3)).astype(np.float32), m=np.ones((n, 3), bool))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    real = drive([args.real_python, str(WORKER)], env, arrays)
    first = [str(HERE / "standins"), str(HERE / "scatter_native")]
    code = (f"import sys; sys.path[:0] = {first!r}; import warp, s3fs, torch_scatter; "
            "print('stand-ins:', warp.__file__, '|', torch_scatter.__version__, file=sys.stderr); "
            f"sys.argv = ['worker']; exec(compile(open({str(WORKER)!r}).read(), 'worker', 'exec'))")
    stand = drive([args.real_python, "-c", code], env, arrays)
    same = real[1] == stand[1] and np.array_equal(real[2], stand[2])
    print(f"PhysicsNeMo {real[0]['physicsnemo']} (torch {real[0]['torch']}): full install losses {real[1]}")
    print(f"with stand-ins: losses {stand[1]}; forward max |diff| {float(np.abs(real[2] - stand[2]).max()):.3g}")
    print("bitwise equal" if same else "DIFFERENT")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
