"""A plain PyTorch Geometric ``MessagePassing`` MeshGraphNet: the baseline of ``bench_train_step.py``.

Same architecture and parameter names as :class:`meshgnn.model.mgn.MeshGraphNet` (so
``PygMeshGraphNet.load_state_dict(ours.state_dict())`` gives the same function), written the way a PyG user
would: every block's edge update is ``edge_mlp(cat[x_j, x_i, e])`` through ``MessagePassing.edge_updater`` (PyG
gathers ``x_j = x[senders]``, ``x_i = x[receivers]``), and the sum aggregation is ``MessagePassing.propagate``
with ``aggr="sum"``. No concat trick, no custom kernels.

Shapes: N nodes, E edges, ``edge_index (2, E)`` rows (senders, receivers) in PyG's ``source_to_target`` flow.
"""
from __future__ import annotations

import torch
from torch import nn

try:
    from torch_geometric.nn import MessagePassing
except ImportError as exc:   # the baseline is optional: say which extra brings it
    raise ImportError("benchmarks/pyg_mgn.py: the PyG baseline needs torch-geometric "
                      "(pip install 'meshgnn[pyg]')") from exc

from meshgnn.model.mgn import mlp


class PygGraphNetBlock(MessagePassing):
    """One MGN processor block: edges from ``[x_s, x_r, e]``, nodes from ``[x, Σ_incoming e']``, residuals."""

    def __init__(self, latent: int, hidden_layers: int = 2):
        super().__init__(aggr="sum", flow="source_to_target")
        self.edge_mlp = mlp(3 * latent, latent, latent, hidden_layers)
        self.node_mlp = mlp(2 * latent, latent, latent, hidden_layers)

    def edge_update(self, x_j: torch.Tensor, x_i: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """``(E, H)`` new edge latents from sender ``x_j``, receiver ``x_i`` and edge ``e`` latents."""
        return self.edge_mlp(torch.cat([x_j, x_i, e], dim=-1))

    def message(self, new_e: torch.Tensor) -> torch.Tensor:
        return new_e

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, e: torch.Tensor):
        """``x (N, H)``, ``e (E, H)`` -> updated ``(x, e)``."""
        new_e = self.edge_updater(edge_index, x=x, e=e)
        agg = self.propagate(edge_index, new_e=new_e, size=(x.shape[0], x.shape[0]))
        new_x = self.node_mlp(torch.cat([x, agg], dim=-1))
        return x + new_x, e + new_e


class PygMeshGraphNet(nn.Module):
    """Encode-process-decode MGN on PyG message passing (parameter names as in meshgnn's ``MeshGraphNet``)."""

    def __init__(self, node_in: int, edge_in: int, node_out: int, latent: int = 128, layers: int = 15,
                 hidden_layers: int = 2):
        super().__init__()
        self.node_encoder = mlp(node_in, latent, latent, hidden_layers)
        self.edge_encoder = mlp(edge_in, latent, latent, hidden_layers)
        self.processor = nn.ModuleList(PygGraphNetBlock(latent, hidden_layers) for _ in range(layers))
        self.decoder = mlp(latent, latent, node_out, hidden_layers, layer_norm=False)

    def forward(self, node_features: torch.Tensor, edge_index: torch.Tensor,
                edge_features: torch.Tensor) -> torch.Tensor:
        """``(N, node_in)``, ``(2, E)``, ``(E, edge_in)`` -> ``(N, node_out)``."""
        x = self.node_encoder(node_features)
        e = self.edge_encoder(edge_features)
        for block in self.processor:
            x, e = block(x, edge_index, e)
        return self.decoder(x)
