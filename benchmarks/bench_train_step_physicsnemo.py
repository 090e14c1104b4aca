"""PhysicsNeMo MeshGraphNet training steps, driven by benchmarks/bench_train_step.py from a separate venv.

Runs with the python of a venv holding ``nvidia-physicsnemo`` (+ torch_geometric, torch-scatter), NOT meshgnn's.
Inputs come from the ``.npz`` the benchmark writes (senders, receivers, node/edge features, target), so both
measure the same graph. The model: ``physicsnemo.models.meshgraphnet.MeshGraphNet`` with 15 processor blocks,
hidden 128 everywhere, 2 hidden layers per MLP, sum aggregation, concat trick on ("concat") or off ("noconcat"),
on a PyG ``Data`` graph; one step = zero_grad, forward, MSE, backward, Adam step (lr 1e-4), as in ours. A
``-bf16`` suffix ("concat-bf16") runs forward and loss under ``torch.autocast(bfloat16)``, as "ours bf16" does.

Modes:
    --memory VARIANT   one warm-up step, then print ``{"peak_mib": ...}`` for a second step (peak RSS growth; on
                       ``--device cuda`` the growth of ``torch.cuda.max_memory_allocated``)
    (default)          print an info line, then answer ``step concat`` / ``step noconcat`` lines on stdin with
                       ``{"wall_s": ..., "cpu_s": ...}``; ``quit`` ends.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch


def load_inputs(path: str, device: str = "cpu"):
    d = np.load(path)
    from torch_geometric.data import Data

    edge_index = torch.from_numpy(np.stack([d["senders"], d["receivers"]])).long()
    graph = Data(edge_index=edge_index, num_nodes=int(d["node_features"].shape[0])).to(device)
    return (graph, *(torch.from_numpy(d[k]).to(device) for k in ("node_features", "edge_features", "target")))


def build_step(variant: str, inputs):
    """``step()`` of one PhysicsNeMo MGN training step; ``variant`` is "concat" or "noconcat", optionally with
    "-bf16" (bf16 autocast, fp32 weights)."""
    from physicsnemo.models.meshgraphnet import MeshGraphNet

    graph, xn, xe, target = inputs
    torch.manual_seed(0)
    model = MeshGraphNet(input_dim_nodes=xn.shape[1], input_dim_edges=xe.shape[1], output_dim=target.shape[1],
                         processor_size=15, num_layers_node_processor=2, num_layers_edge_processor=2,
                         hidden_dim_processor=128, hidden_dim_node_encoder=128, num_layers_node_encoder=2,
                         hidden_dim_edge_encoder=128, num_layers_edge_encoder=2, hidden_dim_node_decoder=128,
                         num_layers_node_decoder=2, aggregation="sum", do_concat_trick=variant.startswith("concat"))
    model = model.to(xn.device)
    bf16 = variant.endswith("-bf16")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(xn.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.mse_loss(model(xn, xe, graph).float(), target)
        loss.backward()
        optimizer.step()

    return step


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inputs", required=True, help=".npz written by bench_train_step.py")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads")
    p.add_argument("--variants", nargs="+", default=["concat", "noconcat"], help="models to build")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant before the info line")
    p.add_argument("--memory", default="", help="concat|noconcat: print the peak RSS growth of a step and exit")
    p.add_argument("--device", default="cpu", help="cpu or cuda (steps timed between torch.cuda.synchronize())")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    inputs = load_inputs(args.inputs, args.device)
    if args.memory:
        step = build_step(args.memory, inputs)
        step()
        if cuda:                                   # the peak of the second step over what lives before it
            sync()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            step()
            sync()
            print(json.dumps({"peak_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}))
            return 0
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = rss_kib()
        step()
        print(json.dumps({"peak_mib": (rss_kib("VmHWM") - before) / 1024}))
        return 0
    import physicsnemo

    steps = {v: build_step(v, inputs) for v in args.variants}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    sync()
    import torch_scatter

    print(json.dumps({"physicsnemo": physicsnemo.__version__, "torch": torch.__version__, "graph": "PyG Data",
                      "device": torch.cuda.get_device_name() if cuda else "cpu",
                      "torch_scatter": getattr(torch_scatter, "__version__", "?")}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        sync()
        w0, c0 = time.perf_counter(), time.process_time()
        steps[cmd[1]]()
        sync()
        print(json.dumps({"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
