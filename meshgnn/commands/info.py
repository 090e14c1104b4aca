"""meshgnn info: describe a dataset (.h5), a part store (.parts.h5) or a checkpoint (.pt).

A dataset's values get the quick checks (meshgnn/io/check.py: trajectories, dtypes, finite points, times) every
time; ``--check`` also reads every frame (finite values) and the edges (indices in range) and exits non-zero,
naming each problem, when one fails.
"""
from __future__ import annotations

import sys


def add_arguments(p):
    p.add_argument("path", metavar="FILE", help="a meshgnn dataset (.h5), part store (.parts.h5) or checkpoint (.pt)")
    p.add_argument("--check", action="store_true",
                   help="dataset: also read every frame and the edges: values finite, indices in range (exit 2 "
                        "and one line per problem on failure)")


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError

    path = Path(args.path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.suffix == ".pt" or path.suffix == ".safetensors":
        print(describe_checkpoint(path))
        return 0
    import h5py

    try:
        with h5py.File(path, "r") as f:
            is_store = "parts" in f and "owner" in f
    except OSError:
        is_store = False      # the dataset reader gives the precise error
    if is_store:
        from meshgnn.decomposition import PartStore
        print(PartStore(path).describe())
        return 0
    return describe_dataset(path, args.check)


def describe_dataset(path, full: bool) -> int:
    from ..errors import MeshgnnError
    from ..io.check import full_problems, quick_problems
    from ..io.dataset import Dataset, describe

    with Dataset(path) as ds:
        problems = quick_problems(ds)
        if problems and not full:
            raise problems[0]
        if not problems:
            print(describe(ds))
        if full:
            total = sum(ds.num_steps(t) for t in ds.trajectories)
            progress = _progress(total)
            problems = full_problems(ds, progress=progress)
            progress(None)
            if problems:
                for p in problems:
                    print(f"problem        {p}")
                raise MeshgnnError(f"{path}: --check: {len(problems)} problem(s), the first: {problems[0]}")
            print(f"values         checked: {total} frames finite, edge indices in range, times increase by dt")
        else:
            print("values         quick checks passed (times, dtypes, points); `meshgnn info --check` reads "
                  "every frame")
    return 0


def _progress(total: int):
    """A stderr progress callback for long checks (silent when stderr is not a terminal)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="check", unit="frame", file=sys.stderr, disable=not sys.stderr.isatty(),
               leave=False)

    def update(done):
        if done is None:
            bar.close()
        else:
            bar.n = done
            bar.refresh()
    return update


def describe_checkpoint(path) -> str:
    from ..checkpoint import load

    state = load(path)
    from ..simulator import complete_config

    sc, tr = complete_config(state["sim_config"]), state["trainer"]
    lay = sc["layout"]
    n_params = sum(v.numel() for k, v in tr["simulator"].items() if k.startswith("model."))
    cfg = tr["config"]
    lines = [f"checkpoint     {path}",
             f"model          MeshGraphNet {sc['layers']} layers x {sc['latent']} latent, "
             f"{sc['hidden_layers']} hidden layers per MLP, nodes sum the edge "
             f"{sc['aggregate']}s, {n_params:,} parameters",
             f"integrator     {sc['integrator']} (halo for exact patches: layers x stages)",
             f"history        {sc['history']} previous state change(s) as input"
             f"{' (rollouts start at frame >= that)' if sc['history'] else ''}",
             f"state fields   {', '.join(f'{n}({c})' for n, c in zip(lay['state_fields'], lay['state_components']))}",
             f"static fields  {', '.join(f'{n}({c})' for n, c in zip(lay['static_fields'], lay['static_components'])) or '-'}",
             f"node types     {', '.join(lay['node_type_names'])}; prescribed: {', '.join(lay['dirichlet_types']) or '-'}",
             f"trained        {tr['step']} of {cfg['steps']} steps on {cfg['dataset']} "
             f"({state.get('world_size', 1)} rank(s), parts: {cfg['parts'] or 'whole graph'}, "
             f"halo mode {cfg.get('halo_mode', 'lhop')})"]
    return "\n".join(lines)
