"""User-facing errors: one line naming the file, the field and what was expected."""
from __future__ import annotations


class MeshgnnError(Exception):
    """An error in the user's input or environment. The CLI prints it as one line and exits non-zero."""


class InputError(MeshgnnError):
    """Bad input file or argument: ``InputError(path, field, expected)`` reads ``path: field: expected``."""

    def __init__(self, path, field: str | None = None, message: str = ""):
        parts = [str(path)] + ([field] if field else []) + ([message] if message else [])
        super().__init__(": ".join(parts))
        self.path, self.field = path, field


def user_errors() -> tuple[type, ...]:
    """The exceptions a command line reports as one line (exit 2): meshgnn's own and the part store's
    (:class:`meshgnn.decomposition.StoreError`; decomposition knows nothing of meshgnn, so it has its own class)."""
    from .decomposition import StoreError

    return (MeshgnnError, StoreError)

