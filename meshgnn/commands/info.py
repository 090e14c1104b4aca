"""meshgnn info: describe a dataset (.h5), a part store (.parts.h5) or a checkpoint (.pt)."""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("path", metavar="FILE", help="a meshgnn dataset (.h5), part store (.parts.h5) or checkpoint (.pt)")


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError

    path = Path(args.path)
    if not path.exists():
        raise InputError(path, None, "file not found")
    if path.suffix == ".pt":
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
    from ..io.dataset import Dataset, describe

    with Dataset(path) as ds:
        print(describe(ds))
    return 0


def describe_checkpoint(path) -> str:
    from ..checkpoint import load

    state = load(path)
    sc, tr = state["sim_config"], state["trainer"]
    lay = sc["layout"]
    n_params = sum(v.numel() for k, v in tr["simulator"].items() if k.startswith("model."))
    cfg = tr["config"]
    lines = [f"checkpoint     {path}",
             f"model          MeshGraphNet {sc['layers']} layers x {sc['latent']} latent, "
             f"{sc['hidden_layers']} hidden layers per MLP, {n_params:,} parameters",
             f"integrator     {sc['integrator']} (halo for exact patches: layers x stages)",
             f"state fields   {', '.join(f'{n}({c})' for n, c in zip(lay['state_fields'], lay['state_components']))}",
             f"static fields  {', '.join(f'{n}({c})' for n, c in zip(lay['static_fields'], lay['static_components'])) or '-'}",
             f"node types     {', '.join(lay['node_type_names'])}; prescribed: {', '.join(lay['dirichlet_types']) or '-'}",
             f"trained        {tr['step']} of {cfg['steps']} steps on {cfg['dataset']} "
             f"({state.get('world_size', 1)} rank(s), parts: {cfg['parts'] or 'whole graph'}, "
             f"halo mode {cfg.get('halo_mode', 'lhop')})"]
    return "\n".join(lines)
