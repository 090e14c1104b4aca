"""PhysicsNeMo MeshGraphNet worker for benchmarks/bench_accuracy.py: trains and evaluates the model, nothing else.

Runs with the python of a venv holding ``nvidia-physicsnemo`` (+ torch_geometric, torch-scatter), NOT meshgnn's.
Everything about the data — which samples, training noise, normalizers, one-hot node types, edge features, loss
mask, learning rate of each step, gradient-clip norm — is decided on meshgnn's side and streamed here already
normalised, so the two models see the same pipeline; this process only runs
``physicsnemo.models.meshgraphnet.MeshGraphNet`` on a PyG ``Data`` graph, Adam and ``clip_grad_norm_``.

Protocol (stdin -> stdout, binary): a message is one JSON header line naming its arrays' dtypes and shapes,
followed by their raw bytes; every reply has the same form.

    init    {"node_in", "edge_in", "node_out", "latent", "layers", "hidden_layers", "seed", "threads", "device"}
            + senders (E,), receivers (E,)                       -> {"params", "physicsnemo", "torch"}
    reset   {"seed"}  a fresh model and optimizer                -> {"cpu_s", "wall_s"} (process CPU time so far,
                                                                    and the wall clock after a CUDA sync)
    step    {"lr", "clip", "batch"} + edge features (E, edge_in), then per sample: node features (N, node_in),
            normalised target (N, node_out), loss mask (N, node_out) bool
            loss = sum of masked squared errors / masked entry count of the whole batch (meshgnn's loss)
                                                                 -> {"loss", "grad_norm", "cpu_s", "wall_s"}
    forward {} + node features (N, node_in), edge features (E, edge_in) -> {} + output (N, node_out) float32
    quit
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch


def _read_exact(inp, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = inp.read(n - len(buf))
        if not chunk:
            raise EOFError(f"pipe closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def read_message(inp):
    """``(header dict, [arrays])`` from a binary stream, or ``(None, [])`` at its end."""
    line = inp.readline()
    if not line:
        return None, []
    head = json.loads(line)
    arrays = []
    for dtype, shape in zip(head.get("dtypes", []), head.get("shapes", [])):
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        arrays.append(np.frombuffer(_read_exact(inp, n), dtype=dt).reshape(shape).copy())
    return head, arrays


def write_message(out, head: dict, arrays=()) -> None:
    """One JSON header line (with the arrays' dtypes and shapes), then each array's raw C-order bytes."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    head = dict(head, dtypes=[a.dtype.str for a in arrays], shapes=[list(a.shape) for a in arrays])
    out.write((json.dumps(head) + "\n").encode())
    for a in arrays:
        out.write(memoryview(a).cast("B") if a.size else b"")
    out.flush()


class Worker:
    def __init__(self, head: dict, senders: np.ndarray, receivers: np.ndarray):
        from torch_geometric.data import Data

        self.cfg = head
        torch.set_num_threads(int(head.get("threads", 1)))
        self.device = torch.device(head.get("device", "cpu"))
        self.num_nodes = int(head["num_nodes"])
        edge_index = torch.from_numpy(np.stack([senders, receivers]).astype(np.int64))
        self.graph = Data(edge_index=edge_index, num_nodes=self.num_nodes).to(self.device)
        self.reset(int(head["seed"]))

    def reset(self, seed: int) -> None:
        from physicsnemo.models.meshgraphnet import MeshGraphNet

        c = self.cfg
        torch.manual_seed(seed)
        H, L, M = int(c["latent"]), int(c["layers"]), int(c["hidden_layers"])
        self.model = MeshGraphNet(input_dim_nodes=int(c["node_in"]), input_dim_edges=int(c["edge_in"]),
                                  output_dim=int(c["node_out"]), processor_size=L, num_layers_node_processor=M,
                                  num_layers_edge_processor=M, hidden_dim_processor=H, hidden_dim_node_encoder=H,
                                  num_layers_node_encoder=M, hidden_dim_edge_encoder=H, num_layers_edge_encoder=M,
                                  hidden_dim_node_decoder=H, num_layers_node_decoder=M, aggregation="sum",
                                  do_concat_trick=True).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def step(self, head: dict, arrays: list) -> dict:
        lr, clip, batch = float(head["lr"]), float(head["clip"]), int(head["batch"])
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        dev = self.device
        e = torch.from_numpy(arrays[0]).to(dev)
        samples = [arrays[1 + 3 * b: 4 + 3 * b] for b in range(batch)]
        count = float(sum(int(m.sum()) for _, _, m in samples)) or 1.0
        self.model.train()
        self.optimizer.zero_grad(set_to_none=False)
        total = 0.0
        for x, target, mask in samples:
            out = self.model(torch.from_numpy(x).to(dev), e, self.graph)
            m = torch.from_numpy(mask).to(dev)
            loss = ((out - torch.from_numpy(target).to(dev))[m] ** 2).sum() / count
            loss.backward()
            total += float(loss.detach())
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.optimizer.step()
        return {"loss": total, "grad_norm": float(norm), **clocks(dev)}

    @torch.no_grad()
    def forward(self, arrays: list) -> np.ndarray:
        self.model.eval()
        x, e = (torch.from_numpy(a).to(self.device) for a in arrays)
        return self.model(x, e, self.graph).to(torch.float32).cpu().numpy()


def clocks(device=None) -> dict:
    """This process's CPU seconds, and the wall clock after the device's queued work has finished."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return {"cpu_s": time.process_time(), "wall_s": time.perf_counter()}


def main() -> int:
    inp = sys.stdin.buffer
    out = os.fdopen(os.dup(1), "wb")      # replies only; anything a library prints goes to stderr
    os.dup2(2, 1)
    worker = None
    while True:
        head, arrays = read_message(inp)
        if head is None or head["cmd"] == "quit":
            break
        cmd = head["cmd"]
        if cmd == "init":
            import physicsnemo

            worker = Worker(head, arrays[0], arrays[1])
            write_message(out, {"params": worker.params, "physicsnemo": physicsnemo.__version__,
                                "torch": torch.__version__, "graph": "PyG Data"})
        elif cmd == "reset":
            worker.reset(int(head["seed"]))
            write_message(out, clocks(worker.device))
        elif cmd == "step":
            write_message(out, worker.step(head, arrays))
        elif cmd == "forward":
            write_message(out, {}, [worker.forward(arrays)])
        else:
            raise SystemExit(f"bench_accuracy_physicsnemo: unknown command {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
