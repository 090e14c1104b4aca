"""meshgnn demo: generate the default packed-column dataset, train a MeshGraphNet, roll out the held-out
trajectory to ParaView files, render pictures and compare with the persistence baseline."""
from __future__ import annotations

import time
from pathlib import Path

DEFAULTS = dict(nodes=5000, trajectories=5, steps=50, train_steps=3000, latent=32, layers=4, minutes=5.0)


def add_arguments(p):
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--nodes", type=int, default=DEFAULTS["nodes"], help="target mesh nodes (default: %(default)s)")
    p.add_argument("--trajectories", type=int, default=DEFAULTS["trajectories"],
                   help="trajectories; the last is held out (default: %(default)s)")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="time steps per trajectory (default: %(default)s)")
    p.add_argument("--train-steps", type=int, default=DEFAULTS["train_steps"],
                   help="optimizer steps (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=DEFAULTS["minutes"],
                   help="wall-clock cap on training; stops early with a checkpoint (default: %(default)s)")
    p.add_argument("--latent", type=int, default=DEFAULTS["latent"], help="latent size (default: %(default)s)")
    p.add_argument("--layers", type=int, default=DEFAULTS["layers"], help="message-passing layers (default: %(default)s)")
    p.add_argument("--integrator", default="euler", help="integrator (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    p.add_argument("--regenerate", action="store_true", help="regenerate the dataset even if it exists")


def run(args) -> int:
    from ..rollout import RolloutConfig, rollout
    from ..train import TrainConfig, train
    from .rollout import print_summary

    out = Path(args.out)
    t0 = time.perf_counter()
    data = out / "data" / "column.h5"
    if args.regenerate or not data.exists():
        from ..generate.column import GenerateConfig, generate_dataset
        print(f"[1/3] generating the packed-column dataset -> {data}")
        generate_dataset(data, GenerateConfig(nodes=args.nodes, trajectories=args.trajectories, steps=args.steps,
                                              seed=args.seed))
    else:
        print(f"[1/3] using the existing dataset {data} (--regenerate to rebuild)")
    # the default recipe (training noise, batch, clipping, warm-up + cosine decay, validation, best.pt); only
    # the model size and the budget are the demo's own
    cfg = TrainConfig(dataset=str(data), out=str(out / "train"), steps=args.train_steps, latent=args.latent,
                      layers=args.layers, integrator=args.integrator, seed=args.seed, lr_final=2e-5,
                      checkpoint_every=250, max_minutes=args.minutes * 1.2)
    cfg.steps = steps_for_budget(cfg, args.minutes, args.train_steps)
    print(f"[2/3] training a MeshGraphNet ({args.layers} layers x {args.latent}, {args.integrator}) "
          f"for {cfg.steps} steps (~{args.minutes:g} min on this machine)")
    summary = train(cfg)
    best = summary.get("best") or summary["checkpoint"]
    print(f"      {summary['steps']} steps in {summary['seconds']:.0f} s, final loss {summary['loss']:.3e}; "
          f"best validation at step {summary.get('best_step', '-')} -> {best}")
    # CO2 and loading are bounded (0 .. inlet concentration, 0 .. saturation): the rollout holds the predictions
    # in the range seen in training (measured on this demo: 2.9x -> 3.9x better than persistence for co2)
    print("[3/3] rolling out the held-out trajectory from the best checkpoint (--clamp true: predictions held in "
          "the training range)")
    res = rollout(RolloutConfig(checkpoint=best, dataset=str(data), out=str(out / "rollout"), clamp=True))
    print_summary(res)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s. Outputs:\n"
          f"  dataset        {data}\n  checkpoint     {best} (best validation), {summary['checkpoint']} (last)\n"
          f"  training log   {out / 'train' / 'train_log.csv'}, {out / 'train' / 'val_log.csv'}, "
          f"TensorBoard {out / 'train' / 'tensorboard'}\n"
          f"  curves         {summary.get('curves')}   (training and validation)\n"
          f"  ParaView       {res['pvd']}   (paraview {res['pvd']})\n"
          f"  RMSE           {out / 'rollout' / 'rmse.csv'}, {out / 'rollout' / 'rmse.png'}\n"
          f"  picture        {res.get('png', '-')}")
    return 0


def steps_for_budget(cfg, minutes: float, most: int, probe: int = 3) -> int:
    """Optimizer steps that fit ``minutes`` here: time a few steps of the same configuration first, so the
    learning-rate schedule spans the steps that will really run."""
    import dataclasses
    import time as _time

    from ..train import Trainer

    trainer = Trainer(dataclasses.replace(cfg, progress=False))
    trainer.step()                                     # warm-up (kernels, caches)
    t0 = _time.perf_counter()
    for _ in range(probe):
        trainer.step()
    per_step = (_time.perf_counter() - t0) / probe
    return int(max(50, min(most, 60 * minutes / per_step)))
