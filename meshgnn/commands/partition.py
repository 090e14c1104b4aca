"""meshgnn partition (not implemented yet)."""
from __future__ import annotations

from ..errors import MeshgnnError


def add_arguments(p):
    pass


def run(args) -> int:
    raise MeshgnnError("'partition' is not implemented yet")
