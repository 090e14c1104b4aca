"""The MeshGraphNet model."""
from .mgn import GraphNetBlock, MeshGraphNet, mlp

__all__ = ["MeshGraphNet", "GraphNetBlock", "mlp"]
