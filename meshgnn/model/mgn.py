"""MeshGraphNets (Pfaff et al., ICLR 2021): encode -> process (L graph-net blocks) -> decode.

Names follow the paper and DeepMind's ``core_model.py``. One processor block updates every edge from
``[sender, receiver, edge]`` and every node from ``[node, sum of incoming edges]``, each with an MLP whose output
goes through LayerNorm, and adds both as residuals.

Shapes: N nodes, E receiver-sorted edges (see :class:`meshgnn.graph.Graph`), H latent size.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import ops
from ..graph import Graph
from .fused import MLP
from .lowmem import STORAGE, rowwise_checkpoint, run_processor


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension that stays fast on a GPU for narrow rows.

    PyTorch's CUDA LayerNorm forward kernel gives each row a thread block; for rows of <= 64 features most of the
    block idles: on an H200 it ran at ~330 GB/s on (14M, 32) edge latents, 68% of a 4 x 32 rollout step
    (benchmarks/RESULTS.md "Rollout at scale"). In inference there (no autograd graph recorded) it is computed as
    ``var_mean`` (one row-wise reduction) and ``(x - mean) * rsqrt(var + eps) * weight + bias``: 1.9x faster at
    32 features, 1.08x at 64 (benchmarks/bench_layernorm.py). With autograd, torch's fused backward wins (the
    decomposed path's forward + backward measured 0.96x at 32, 0.61x at 64), so training keeps ``F.layer_norm``,
    as do the CPU and wider rows. Same parameters and state dict as ``nn.LayerNorm``.
    """

    narrow = 64   # widest last dimension that takes the decomposed path (CUDA, inference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        recording = torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        if (recording or not x.is_cuda or len(self.normalized_shape) != 1 or self.normalized_shape[0] > self.narrow
                or not self.elementwise_affine):
            return super().forward(x)
        return _narrow_layer_norm(x, self.weight, self.bias, self.eps)


def _narrow_layer_norm(x, weight, bias, eps: float):
    dtype = torch.promote_types(x.dtype, torch.float32)        # statistics in fp32 at least, as F.layer_norm
    xf = x.to(dtype)
    var, mean = torch.var_mean(xf, dim=-1, keepdim=True, correction=0)
    y = (xf - mean) * torch.rsqrt(var + eps) * weight.to(dtype)
    if bias is not None:
        y = y + bias.to(dtype)
    # nn.LayerNorm under autocast returns float32; outside autocast it keeps the input dtype
    return y if torch.is_autocast_enabled(x.device.type) else y.to(x.dtype)


AGGREGATES = ("update", "state")


def mlp(in_size: int, latent: int, out_size: int, hidden_layers: int = 2, layer_norm: bool = True) -> MLP:
    """``hidden_layers`` Linear+ReLU layers of width ``latent``, a Linear to ``out_size``, optional LayerNorm
    (an :class:`meshgnn.model.fused.MLP`: fused bias/ReLU on CPU in fp32)."""
    layers: list[nn.Module] = []
    size = in_size
    for _ in range(hidden_layers):
        layers += [nn.Linear(size, latent), nn.ReLU()]
        size = latent
    layers.append(nn.Linear(size, out_size))
    if layer_norm:
        layers.append(LayerNorm(out_size))
    return MLP(*layers)


class GraphNetBlock(nn.Module):
    """One message-passing step with residual connections.

    With ``concat_trick`` the first edge-MLP layer ``W [x_s, x_r, e] + c`` is computed as
    ``(W_s x)[s] + (W_r x + c)[r] + W_e e``: the node projections run once per node, not once per edge, and the
    gather-add is one fused kernel (:func:`meshgnn.ops.gather_add`). Both paths use the same parameters, so a
    checkpoint works with either.

    ``aggregate`` picks what each node sums over its incoming edges: ``"update"`` the edge MLP's outputs (the
    paper and DeepMind's code), ``"state"`` the updated edge latents ``e + edge_mlp(...)`` (PhysicsNeMo's
    MeshGraphNet: the residual is added in its edge block, before the node block aggregates). Same parameters;
    docs/design.md "Aggregating the edge update or the edge state".
    """

    def __init__(self, latent: int, hidden_layers: int = 2, concat_trick: bool = True, aggregate: str = "update"):
        super().__init__()
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
        self.latent = latent
        self.concat_trick = concat_trick
        self.aggregate = aggregate
        self.edge_mlp = mlp(3 * latent, latent, latent, hidden_layers)
        self.node_mlp = mlp(2 * latent, latent, latent, hidden_layers)

    def _update_edges(self, x: torch.Tensor, e: torch.Tensor, graph: Graph) -> torch.Tensor:
        if not self.concat_trick:
            return self.edge_mlp(torch.cat([x[graph.senders], x[graph.receivers], e], dim=-1))
        h = ops.gather_add(*self.node_projections(x), self.edge_projection(e), graph)
        return self.edge_mlp.after_first(h)

    def node_projections(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Concat trick: ``(x W_sᵀ, x W_rᵀ + c)``, ``(N, H)`` each, the node parts of the first edge Linear. The
        bias rides on the receiver part: every edge has one receiver, so the sum is the same, and its add and
        gradient cost N rows instead of E."""
        first, H = self.edge_mlp[0], self.latent
        return x @ first.weight[:, :H].t(), torch.addmm(first.bias, x, first.weight[:, H:2 * H].t())

    def edge_projection(self, e: torch.Tensor) -> torch.Tensor:
        """Concat trick: ``e W_eᵀ`` ``(E, H)``, the edge part of the first edge Linear."""
        return e @ self.edge_mlp[0].weight[:, 2 * self.latent:].t()

    def forward(self, x: torch.Tensor, e: torch.Tensor, graph: Graph):
        new_e = self._update_edges(x, e, graph)
        e_next = e + new_e
        agg = ops.segment_sum(new_e if self.aggregate == "update" else e_next, graph.rowptr)
        new_x = self.node_mlp(torch.cat([x, agg], dim=-1))
        return x + new_x, e_next


class MeshGraphNet(nn.Module):
    """Encode-process-decode graph network.

    Args:
        node_in: node input features; edge_in: edge input features; node_out: output features per node.
        latent: latent size H (paper: 128). layers: processor blocks L (paper: 15).
        hidden_layers: hidden layers per MLP (paper: 2). concat_trick, aggregate: see :class:`GraphNetBlock`.
        checkpoint_layers: recompute each block in backward (torch activation checkpointing) to save memory.
        checkpoint_segments: S > 0 runs the processor in training through :mod:`meshgnn.model.lowmem`: edge
            latents saved at the start of S segments of ceil(L/S) blocks, edge MLP backward in edge chunks
            (S = L: per-layer). checkpoint_storage: dtype of the saved activations there, "float32" (the
            compute dtype; exact) or "bfloat16" (half the bytes; gradients within bf16 rounding).
        memory_budget: what one training forward + backward may use: GiB (number or text), "auto" (the
            device's memory, :func:`meshgnn.plan.device_memory_bytes`) or "" (off). Set, it lets
            :func:`meshgnn.plan.choose` pick the checkpoint plan per graph size (``stages`` model calls per step),
            overriding the three options above.
    """

    def __init__(self, node_in: int, edge_in: int, node_out: int, latent: int = 128, layers: int = 15,
                 hidden_layers: int = 2, concat_trick: bool = True, checkpoint_layers: bool = False,
                 checkpoint_segments: int = 0, checkpoint_storage: str = "float32", memory_budget="",
                 stages: int = 1, aggregate: str = "update"):
        super().__init__()
        self.config = dict(node_in=node_in, edge_in=edge_in, node_out=node_out, latent=latent, layers=layers,
                           hidden_layers=hidden_layers, concat_trick=concat_trick, aggregate=aggregate)
        if checkpoint_storage not in STORAGE:
            raise ValueError(f"checkpoint_storage must be one of {', '.join(STORAGE)}, got {checkpoint_storage!r}")
        self.checkpoint_layers = checkpoint_layers
        self.checkpoint_segments = int(checkpoint_segments)
        self.checkpoint_storage = checkpoint_storage
        self.memory_budget = "" if memory_budget in (None, 0, "") else str(memory_budget)
        if self.memory_budget and self.memory_budget != "auto":
            from ..plan import budget_bytes

            budget_bytes(self.memory_budget, "cpu")       # bad text fails here, not at the first step
        self.stages = int(stages)
        self.last_plan = None    # the meshgnn.plan.Plan of the latest planned forward (memory_budget > 0)
        self._announced: set = set()
        self.node_encoder = mlp(node_in, latent, latent, hidden_layers)
        self.edge_encoder = mlp(edge_in, latent, latent, hidden_layers)
        self.processor = nn.ModuleList(GraphNetBlock(latent, hidden_layers, concat_trick, aggregate)
                                       for _ in range(layers))
        self.decoder = mlp(latent, latent, node_out, hidden_layers, layer_norm=False)

    @property
    def num_layers(self) -> int:
        return len(self.processor)

    def encode_edges(self, edge_features: torch.Tensor) -> torch.Tensor:
        """Edge latents ``(E, H)``; constant over integrator stages when the mesh does not move.

        In segment-checkpointed training the encoder is recomputed in backward (its (E, H) intermediates
        would otherwise stay saved for the whole step)."""
        if torch.is_grad_enabled() and self._processor_plan(edge_features.shape[0], None)[0] == "segments":
            return rowwise_checkpoint(self.edge_encoder, edge_features)
        return self.edge_encoder(edge_features)

    def _processor_plan(self, num_edges: int, num_nodes: Optional[int]) -> tuple[str, int, str]:
        """``(mode, segments, storage)`` of a training forward: mode "none", "layers" (torch checkpoint per
        block) or "segments" (:mod:`.lowmem`)."""
        if self.memory_budget:
            from ..plan import budget_bytes, choose

            budget = budget_bytes(self.memory_budget, next(self.parameters()).device)
            n = num_nodes if num_nodes is not None else max(1, round(num_edges / 13))   # tet meshes: E ≈ 13 N
            p = choose(n, num_edges, self.config["latent"], self.num_layers, self.stages, budget,
                       hidden_layers=self.config["hidden_layers"])
            self.last_plan = p
            if p.describe() not in self._announced and num_nodes is not None:
                self._announced.add(p.describe())
                print(f"meshgnn: memory plan: {p.describe()}", file=sys.stderr, flush=True)
            return p.mode, p.segments, p.storage
        if self.checkpoint_segments > 0 or self.checkpoint_storage != "float32":
            return "segments", self.checkpoint_segments or self.num_layers, self.checkpoint_storage
        return ("layers" if self.checkpoint_layers else "none"), 0, "float32"

    def forward(self, node_features: torch.Tensor, graph: Graph, edge_features: Optional[torch.Tensor] = None,
                edge_latent: Optional[torch.Tensor] = None,
                halo_exchange: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """``(N, node_in)`` node features -> ``(N, node_out)`` outputs.

        Pass either ``edge_features (E, edge_in)`` or an already encoded ``edge_latent (E, H)``.
        ``halo_exchange`` (per-layer halo mode) refreshes ghost rows of the node latents from their owners
        before every processor block.
        """
        x = self.node_encoder(node_features)
        e = edge_latent if edge_latent is not None else self.encode_edges(edge_features)
        mode, segments, storage = (self._processor_plan(graph.num_edges, graph.num_nodes) if torch.is_grad_enabled()
                                   else ("none", 0, "float32"))
        if mode == "segments" and halo_exchange is None:
            x, e = run_processor(self.processor, x, e, graph, segments, storage)
            return self.decoder(x)
        for block in self.processor:
            if halo_exchange is not None:
                x = halo_exchange(x)
            if mode != "none":   # per-layer halo exchange runs outside the blocks: torch checkpoint per block
                x, e = checkpoint(block, x, e, graph, use_reentrant=False)
            else:
                x, e = block(x, e, graph)
        return self.decoder(x)
