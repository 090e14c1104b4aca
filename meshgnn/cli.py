"""The ``meshgnn`` command: generate | import | partition | train | rollout | render | info | demo.

Each sub-command lives in ``meshgnn/commands/<name>.py`` with ``add_arguments(parser)`` and ``run(args) -> int``;
heavy imports stay inside ``run`` so ``--help`` is instant. Errors a user can fix (:class:`MeshgnnError`) print
as one line and exit 2; anything else exits 1. ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import user_errors
from .memory import ALLOCATORS, allocator_in_effect, reexec_with_allocator

COMMANDS = {
    "generate": ("generate", "generate a 3D packed-column CFD dataset (gmsh tet mesh + FEM transport solver)"),
    "import": ("import_", "import solver output (VTU/PVD/XDMF series, OpenFOAM cases, CSV tables) into a dataset"),
    "info": ("info", "describe a dataset, part store or checkpoint"),
    "partition": ("partition", "partition a dataset's mesh graph into parts with halos (METIS or RCB)"),
    "train": ("train", "train a MeshGraphNet (whole graph or patches; under mpirun across ranks)"),
    "rollout": ("rollout", "roll a trained model out and write ParaView files and error metrics"),
    "render": ("render", "render PNG pictures / animations of a field from rollout output"),
    "demo": ("demo", "the end-to-end demo: generate, train, roll out, render"),
    "migrate-checkpoint": ("migrate_checkpoint", "convert a version-1 (pickle) checkpoint you trust to the safe "
                                                 "format (tensors + JSON)"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``meshgnn train: error: argument --lr: ...``; ``--help`` for usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Terminated(BaseException):
    """SIGTERM outside a training loop (which checkpoints and stops on its own)."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


THREADS_HELP = ("CPU threads per process (default: the cores this process may use / ranks on this node, less "
                "cores busy with other work; an exported OMP_NUM_THREADS is kept)")


ALLOCATOR_HELP = ("CPU memory allocator for train/rollout/demo: auto (jemalloc, else tcmalloc, where installed: "
                  "~2.8x faster CPU training steps than glibc's at about its peak RSS), jemalloc, tcmalloc, or "
                  "system (glibc: the lowest peak; what auto takes with --memory-budget); default $MESHGNN_ALLOCATOR "
                  "or auto")
HEAVY_COMMANDS = ("train", "rollout", "demo")   # the commands that re-execute with the allocator preloaded


def _threads(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _prepare(args, argv) -> None:
    """Before the sub-command runs (and torch loads): threads (meshgnn/threads.py; ``--debug`` shows the
    choice) and the provenance of this invocation (meshgnn/provenance.py; train/rollout write ``<out>/run.json``
    once they hold the folder)."""
    from .provenance import record
    from .threads import configure_threads

    choice = configure_threads(args.threads)
    if args.debug:
        print(f"meshgnn {args.command}: {choice.describe()}", file=sys.stderr)
    record(argv, args, extra={"threads": choice.threads, "allocator": allocator_in_effect()})
    # train/rollout write <out>/run.json themselves, once they own the folder (meshgnn/io/runfolder.py): a
    # refused run must not touch another run's folder


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="meshgnn", description=__doc__.splitlines()[0])
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors (and the thread choice)")
    p.add_argument("--threads", type=_threads, default=None, metavar="N", help=THREADS_HELP)
    p.add_argument("--allocator", choices=ALLOCATORS, default=os.environ.get("MESHGNN_ALLOCATOR", "auto"),
                   help=ALLOCATOR_HELP)
    p.add_argument("--version", action="version", version=f"meshgnn {__import__('meshgnn').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for name, (mod, help_) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
        sp.add_argument("--threads", type=_threads, default=argparse.SUPPRESS, metavar="N", help=THREADS_HELP)
        if name in HEAVY_COMMANDS:
            sp.add_argument("--allocator", choices=ALLOCATORS, default=argparse.SUPPRESS, help=ALLOCATOR_HELP)
        module = importlib.import_module(f"meshgnn.commands.{mod}")
        module.add_arguments(sp)
        sp.set_defaults(_module=module)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    if argv is None and args.command in HEAVY_COMMANDS:   # a program, not an in-process call: may re-execute
        try:
            choice = args.allocator
            budget = getattr(args, "memory_budget", None)      # an unset option holds a sentinel, not a str
            if choice == "auto" and isinstance(budget, str) and budget:
                choice = "system"     # the planner budgets the live peak; a caching malloc keeps more resident
            allocator = reexec_with_allocator(choice, ["-m", "meshgnn.cli", *sys.argv[1:]])
        except ValueError as e:
            print(f"meshgnn {args.command}: error: {e}", file=sys.stderr)
            return 2
        if args.debug:
            print(f"meshgnn {args.command}: allocator: {allocator}", file=sys.stderr)
    import signal
    import threading
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        _prepare(args, sys.argv[1:] if argv is None else [str(a) for a in argv])
        rc = args._module.run(args)
        sys.stdout.flush()
        return int(rc or 0)
    except BrokenPipeError:            # `meshgnn info x | head`: the reader left; say nothing more
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Terminated:
        print(f"meshgnn {args.command}: terminated by SIGTERM", file=sys.stderr)
        return 143
    except user_errors() as e:
        if args.debug:
            raise
        print(f"meshgnn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meshgnn {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:               # the environment (full disk, permissions): the path and the reason
        if args.debug:
            raise
        where = e.filename or getattr(args, "out", None) or "output"
        print(f"meshgnn {args.command}: error: {where}: {e.strerror or e} ({type(e).__name__})", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if args.debug:
            raise
        print(f"meshgnn {args.command}: internal error: {type(e).__name__}: {e} (rerun with --debug for details)",
              file=sys.stderr)
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
