"""``torch_scatter.scatter`` for ``reduce="sum"`` with the same torch operations torch-scatter 2.1.2 itself runs for
a sum: the index broadcast to ``src``'s shape (a view), a zero output and ``Tensor.scatter_add_``. torch-scatter's
sum has no compiled kernel of its own (only mul/min/max do), so this stand-in is the same computation; it exists
because torch-scatter has no wheel for the GPU image's torch 2.11+cu130 and its setup needs a build there.
PhysicsNeMo's MeshGraphNet (aggregation="sum") calls only ``scatter(src, index, dim=0, dim_size=N, reduce="sum")``;
anything else fails loudly."""
import torch

__version__ = "2.1.2 stand-in (sum via Tensor.scatter_add_, as torch-scatter computes it)"


def scatter(src, index, dim=-1, out=None, dim_size=None, reduce="sum"):
    if reduce not in ("sum", "add"):
        raise NotImplementedError(f"torch_scatter stand-in: reduce={reduce!r} (only sum)")
    dim = dim % src.dim()
    shape = [1] * src.dim()
    shape[dim] = -1
    index = index.view(shape).expand_as(src)
    if out is None:
        size = list(src.shape)
        size[dim] = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
        out = torch.zeros(size, dtype=src.dtype, device=src.device)
    return out.scatter_add_(dim, index, src)


def __getattr__(name):
    raise ImportError(f"torch_scatter stand-in: torch_scatter.{name} is not available")
