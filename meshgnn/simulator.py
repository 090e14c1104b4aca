"""The learned simulator: a MeshGraphNet rate wrapped by a Runge–Kutta integrator, with normalizers and noise.

One time step maps the state ``y_n`` (N, C) of the dataset's state fields to ``y_{n+1}``:
``k_i = f(constrain(y_n + Σ_j a_ij k_j))``, ``y_{n+1} = y_n + Σ_i b_i k_i`` with ``f`` the de-normalised MGN output
(per-step change units, Δt absorbed). Forward Euler reduces to the original MeshGraphNets update.
Nodes whose type is *prescribed* (Dirichlet, e.g. inlets) keep the values the data gives them.

With ``history`` H > 0 the rate also reads the last H changes ``y_n - y_{n-1}, ..., y_{n-H+1} - y_{n-H}``
(:func:`history_features`, (N, H·C), newest first), constant over the stages of a step; a rollout carries them
forward with :meth:`Simulator.next_history` (docs/design.md, "History inputs").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

from meshgnn import integrators

from .features import Normalizer, counter_normal, edge_feature_size, one_hot
from .graph import Graph
from .model import MeshGraphNet


@dataclass
class FieldLayout:
    """Which dataset fields the model reads and predicts, and the node types it knows."""

    state_fields: list[str]
    state_components: list[int]
    static_fields: list[str]
    static_components: list[int]
    node_type_names: list[str]
    dirichlet_types: list[str] = field(default_factory=list)
    units: dict = field(default_factory=dict)
    # {state field: node types prescribing it}; empty: every state field is prescribed on ``dirichlet_types``
    dirichlet_fields: dict = field(default_factory=dict)
    dim: int = 3   # spatial dimension of the mesh points: edge features are (dim + 1) wide (checkpoints store it)

    @property
    def state_size(self) -> int:
        return sum(self.state_components)

    @property
    def static_size(self) -> int:
        return sum(self.static_components)

    @property
    def num_node_types(self) -> int:
        return len(self.node_type_names)

    @property
    def dirichlet_codes(self) -> list[int]:
        return [self.node_type_names.index(t) for t in self.dirichlet_types if t in self.node_type_names]

    def prescribed_types(self) -> list[list[int]]:
        """Per state *component*: the node type codes whose values the data prescribes for it."""
        out = []
        for name, comps in zip(self.state_fields, self.state_components):
            types = self.dirichlet_fields.get(name, self.dirichlet_types) if self.dirichlet_fields else \
                self.dirichlet_types
            codes = [self.node_type_names.index(t) for t in types if t in self.node_type_names]
            out.extend([codes] * comps)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dataset(cls, ds) -> "FieldLayout":
        return cls(state_fields=list(ds.state_fields),
                   state_components=[ds.fields[f].components for f in ds.state_fields],
                   static_fields=list(ds.static_fields),
                   static_components=[ds.fields[f].components for f in ds.static_fields],
                   node_type_names=list(ds.node_type_names), dirichlet_types=list(ds.dirichlet_types),
                   units={f: ds.fields[f].units for f in ds.fields},
                   dirichlet_fields={f: list(t) for f, t in ds.dirichlet_fields.items()},
                   dim=int(getattr(ds, "dim", 3)))


@dataclass
class PatchTensors:
    """The time-independent tensors of one patch (or of the whole graph, a patch with no halo).

    ``n`` local nodes (core first), ``E`` local receiver-sorted edges.
    """

    graph: Graph
    edge_features: torch.Tensor   # (E, D + 1) raw relative positions + norm (D = 2 or 3)
    node_type: torch.Tensor       # (n,) int64
    global_ids: torch.Tensor      # (n,) int64
    n_core: int                   # owned rows come first ...
    core: Optional[torch.Tensor] = None   # ... unless this (n,) bool mask says which rows are owned (a union)

    @property
    def num_nodes(self) -> int:
        return self.graph.num_nodes

    def core_mask(self) -> torch.Tensor:
        if self.core is not None:
            return self.core
        m = torch.zeros(self.num_nodes, dtype=torch.bool, device=self.node_type.device)
        m[: self.n_core] = True
        return m

    def to(self, device) -> "PatchTensors":
        return PatchTensors(self.graph.to(device), self.edge_features.to(device), self.node_type.to(device),
                            self.global_ids.to(device), self.n_core,
                            None if self.core is None else self.core.to(device))

    @classmethod
    def union(cls, patches: list["PatchTensors"]) -> "PatchTensors":
        """The disjoint union of patches (rows end to end, edges offset): one graph for lock-step patches."""
        from .graph import Graph, rowptr_from_receivers

        offsets = [0]
        for p in patches:
            offsets.append(offsets[-1] + p.num_nodes)
        s = torch.cat([p.graph.senders + o for p, o in zip(patches, offsets)])
        r = torch.cat([p.graph.receivers + o for p, o in zip(patches, offsets)])   # stays receiver-sorted
        graph = Graph(s, r, rowptr_from_receivers(r, offsets[-1]), offsets[-1])
        return cls(graph, torch.cat([p.edge_features for p in patches]), torch.cat([p.node_type for p in patches]),
                   torch.cat([p.global_ids for p in patches]), -1, torch.cat([p.core_mask() for p in patches]))


# what a checkpoint's sim_config means where it predates a key (the behaviour before the key existed)
PRE_KEY_CONFIG = {"history": 0, "aggregate": "update"}


def complete_config(config: dict) -> dict:
    """A checkpoint's ``sim_config`` with :data:`PRE_KEY_CONFIG` filled in where it predates those keys."""
    return {**PRE_KEY_CONFIG, **config}


class Simulator(nn.Module):
    """MeshGraphNet + normalizers + integrator. ``config()`` rebuilds it (stored in checkpoints)."""

    def __init__(self, layout: FieldLayout, latent: int = 128, layers: int = 15, hidden_layers: int = 2,
                 integrator: str = "euler", concat_trick: bool = True, checkpoint_layers: bool = False,
                 checkpoint_stages: bool = False, freeze_after: int = 10_000, checkpoint_segments: int = 0,
                 checkpoint_storage: str = "float32", memory_budget: str = "", history: int = 0,
                 aggregate: str = "update"):
        super().__init__()
        self.layout = layout
        self.method = integrators.get_method(integrator)
        self.integrator = integrator
        self.checkpoint_stages = checkpoint_stages
        self._config = dict(latent=latent, layers=layers, hidden_layers=hidden_layers, integrator=integrator,
                            concat_trick=concat_trick, freeze_after=freeze_after, history=history,
                            aggregate=aggregate)
        self.history = int(history)
        node_in = layout.state_size * (1 + self.history) + layout.static_size + layout.num_node_types
        self.edge_size = edge_feature_size(layout.dim)
        self.model = MeshGraphNet(node_in, self.edge_size, layout.state_size, latent=latent, layers=layers,
                                  hidden_layers=hidden_layers, concat_trick=concat_trick, aggregate=aggregate,
                                  checkpoint_layers=checkpoint_layers, checkpoint_segments=checkpoint_segments,
                                  checkpoint_storage=checkpoint_storage, memory_budget=memory_budget,
                                  stages=self.method.stages)   # memory options: not in config() (no semantics)
        self._compiled: dict = {}   # torch.compile'd model functions (compile_model); not module state
        self.node_normalizer = Normalizer(layout.state_size + layout.static_size, freeze_after)
        self.edge_normalizer = Normalizer(self.edge_size, freeze_after)
        self.target_normalizer = Normalizer(layout.state_size, freeze_after)
        if self.history:
            self.history_normalizer = Normalizer(layout.state_size * self.history, freeze_after)
        # the state's range over the training frames seen (per component), for range checks and --clamp
        self.register_buffer("state_lo", torch.full((layout.state_size,), float("inf"), dtype=torch.float64))
        self.register_buffer("state_hi", torch.full((layout.state_size,), -float("inf"), dtype=torch.float64))
        self.clamp = False        # a run-time choice (rollout --clamp), not part of the model

    def compile_model(self) -> None:
        """Run the model's forward and edge encoder through ``torch.compile`` (inductor). The custom aggregation
        ops trace as opaque ops; parameters, state dict and checkpoints are unchanged (the module is not wrapped).
        """
        self._compiled = {"forward": torch.compile(self.model.forward),
                          "encode_edges": torch.compile(self.model.encode_edges)}

    # ------------------------------------------------------------------------------------------------ bookkeeping
    def config(self) -> dict:
        return dict(self._config, layout=self.layout.to_dict())

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "Simulator":
        cfg = complete_config(config)
        layout = FieldLayout(**cfg.pop("layout"))
        cfg.update(overrides)
        return cls(layout, **cfg)

    @property
    def stages(self) -> int:
        return self.method.stages

    @property
    def receptive_hops(self) -> int:
        """Hops one time step reaches (the exact halo depth): :func:`meshgnn.integrators.receptive_field_hops`."""
        return integrators.receptive_field_hops(self.model.num_layers, self.method)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As ``nn.Module``'s; a checkpoint from before the state range was recorded loads with no range."""
        state_dict = dict(state_dict)
        state_dict.setdefault("state_lo", torch.full_like(self.state_lo, float("inf")))
        state_dict.setdefault("state_hi", torch.full_like(self.state_hi, -float("inf")))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def widen_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Grow the recorded state range ``[state_lo, state_hi]`` (C,) to include ``[lo, hi]``."""
        self.state_lo.copy_(torch.minimum(self.state_lo, lo.to(self.state_lo)))
        self.state_hi.copy_(torch.maximum(self.state_hi, hi.to(self.state_hi)))

    def clamp_to_range(self, y: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """``y`` (n, C) with its free components clamped to the recorded training range (where one exists)."""
        known = torch.isfinite(self.state_lo) & torch.isfinite(self.state_hi)
        lo = torch.where(known, self.state_lo, -torch.inf).to(y.dtype)
        hi = torch.where(known, self.state_hi, torch.inf).to(y.dtype)
        return torch.where(fixed, y, torch.minimum(torch.maximum(y, lo), hi))

    def normalizers(self) -> list[Normalizer]:
        """Node, edge, target and (with ``history``) history normalizers, in that order."""
        extra = [self.history_normalizer] if self.history else []
        return [self.node_normalizer, self.edge_normalizer, self.target_normalizer, *extra]

    def next_history(self, history: Optional[torch.Tensor], y: torch.Tensor, y_next: torch.Tensor):
        """The history ``(n, H·C)`` after the step ``y -> y_next`` (the newest change first); None without one."""
        if not self.history:
            return None
        return torch.cat([y_next - y, history[:, :-y.shape[1]]], dim=1)

    def fixed_mask(self, node_type: torch.Tensor) -> torch.Tensor:
        """(n, C) bool: the state components the data prescribes at each node (per-field Dirichlet values)."""
        per_comp = self.layout.prescribed_types()
        mask = torch.zeros(node_type.shape[0], len(per_comp), dtype=torch.bool, device=node_type.device)
        for j, codes in enumerate(per_comp):
            for c in codes:
                mask[:, j] |= node_type == c
        return mask

    # ------------------------------------------------------------------------------------------------ the physics
    def rate(self, y: torch.Tensor, static: torch.Tensor, patch: PatchTensors, edge_latent: torch.Tensor,
             halo_exchange: Optional[Callable] = None, history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``f(y)``: the per-step rate ``(n, C)`` in physical units (``history`` (n, H·C) with ``history`` H > 0)."""
        hist = [self.history_normalizer(history.to(y.dtype))] if self.history else []
        x = torch.cat([self.node_normalizer(torch.cat([y, static], dim=1)), *hist,
                       one_hot(patch.node_type, self.layout.num_node_types).to(y.dtype)], dim=1)
        forward = self._compiled.get("forward", self.model)
        out = forward(x, patch.graph, edge_latent=edge_latent, halo_exchange=halo_exchange)
        return self.target_normalizer.inverse(out)

    def encode_edges(self, patch: PatchTensors, dtype) -> torch.Tensor:
        encode = self._compiled.get("encode_edges", self.model.encode_edges)
        return encode(self.edge_normalizer(patch.edge_features.to(dtype)))

    def step(self, y: torch.Tensor, static: torch.Tensor, patch: PatchTensors, y_next_fixed: Optional[torch.Tensor] = None,
             halo_exchange: Optional[Callable] = None, fixed: Optional[torch.Tensor] = None,
             history: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One time step ``y_n -> y_{n+1}`` (out of place); ``history`` (n, H·C): the last H changes, required
        when the simulator was built with ``history`` H > 0 (:func:`history_features`).

        Prescribed components (``fixed`` (n, C), or (n,) for whole rows) keep ``y``'s values on every stage input;
        in the result they take ``y_next_fixed``'s values when given (the data's next boundary values), else ``y``'s.
        """
        if self.history and (history is None or history.shape != (y.shape[0], y.shape[1] * self.history)):
            got = "none" if history is None else tuple(history.shape)
            raise ValueError(f"this model reads the last {self.history} state change(s): history must be "
                             f"({y.shape[0]}, {y.shape[1] * self.history}), got {got}")
        if fixed is None:
            fixed = self.fixed_mask(patch.node_type)
        if fixed.dim() == 1:
            fixed = fixed[:, None]
        edge_latent = self.encode_edges(patch, y.dtype)

        def constrain(z):
            return torch.where(fixed, y, z)

        def rate(z):
            return self.rate(z, static, patch, edge_latent, halo_exchange, history)

        y_next = integrators.rk_step(rate, y, self.method, dt=1.0, constrain=constrain,
                                     checkpoint_stages=self.checkpoint_stages and torch.is_grad_enabled())
        if self.clamp:
            y_next = self.clamp_to_range(y_next, fixed.expand_as(y_next))
        if y_next_fixed is not None:
            y_next = torch.where(fixed, y_next_fixed, y_next)
        return y_next


def history_features(frames: list[torch.Tensor]) -> torch.Tensor:
    """``(n, H·C)``: the changes between consecutive ``frames`` ``[y_t, y_{t-1}, ..., y_{t-H}]`` (each (n, C)),
    newest first: ``[y_t - y_{t-1}, ..., y_{t-H+1} - y_{t-H}]``."""
    return torch.cat([a - b for a, b in zip(frames[:-1], frames[1:])], dim=1)


def training_noise(seed: int, step: int, global_ids: torch.Tensor, std: torch.Tensor, fixed: torch.Tensor,
                   dtype=torch.float32) -> torch.Tensor:
    """Gaussian noise ``(n, C)`` of per-component std ``std (C,)`` on non-prescribed components (``fixed`` (n, C)
    or (n,)), keyed by global id."""
    z = counter_normal(seed, step, global_ids.cpu(), std.numel()).to(global_ids.device)
    z = z * std.to(z)
    free = ~(fixed if fixed.dim() == 2 else fixed[:, None])
    return (z * free).to(dtype)
