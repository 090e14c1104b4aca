"""meshgnn migrate-checkpoint OLD NEW --trust: convert a version-1 (pickle) checkpoint to the safe format.

Version-1 checkpoints were ``torch.save`` pickles: loading one can run any code its author put in it. Every
other command refuses them; this one unpickles OLD — only with ``--trust``, your statement that you know where
the file comes from — and writes NEW as a version-2 checkpoint (tensors in safetensors, the rest as JSON), which
loads without running anything. See docs/reliability.md §4.
"""
from __future__ import annotations


def add_arguments(p):
    p.add_argument("old", metavar="OLD", help="version-1 checkpoint (.pt pickle from meshgnn before format 2)")
    p.add_argument("new", metavar="NEW", help="converted checkpoint to write (replaced atomically)")
    p.add_argument("--trust", action="store_true",
                   help="required: you trust OLD's source (unpickling it can execute code it carries)")


def run(args) -> int:
    from pathlib import Path

    from ..checkpoint import migrate
    from ..errors import InputError

    if not args.trust:
        raise InputError(args.old, None, "unpickling a checkpoint can run code it carries; pass --trust if you "
                                         "know where it comes from")
    if Path(args.new).resolve() == Path(args.old).resolve():
        raise InputError(args.new, None, "choose another NEW path (OLD is kept as it is)")
    out = migrate(args.old, args.new)
    print(f"wrote {out} (checkpoint format 2: tensors + JSON, loads without running code)")
    return 0
