"""Run ``meshgnn <command> ...`` with a fault injected (test-only; nothing here ships in meshgnn).

    python rel_fault.py FAULT meshgnn-args...

FAULT (one of):
    none                      no fault (the wrapper itself is the control)
    die-train:STEP:RANK       rank RANK SIGKILLs itself when it starts optimizer step STEP
    die-rollout:STEP:RANK     rank RANK SIGKILLs itself when it starts rollout time step STEP
    ckpt-mid-write:N          the N-th checkpoint save (1-based) writes half its bytes to the temporary file,
                              fsyncs them and SIGKILLs the process
    ckpt-before-rename:N      the N-th checkpoint save SIGKILLs the process with the temporary file complete and
                              fsynced, just before the rename
SIGKILL, not an exception: no ``finally``, no atexit, no MPI Abort — what a node failure or the OOM killer does.
"""
import os
import signal
import sys


def _die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _rank() -> int:
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))


def install(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind == "none":
        return
    if kind == "die-train":
        from meshgnn import train as T

        step, rank = map(int, args)
        orig = T.Trainer.step

        def step_or_die(self):
            if self.step_index == step and _rank() == rank:
                print(f"FAULT: rank {rank} killed at train step {step}", file=sys.stderr, flush=True)
                _die()
            return orig(self)

        T.Trainer.step = step_or_die
    elif kind == "die-rollout":
        from meshgnn import rollout as R

        step, rank = map(int, args)
        orig = R.PatchedState.advance
        calls = [0]

        def advance_or_die(self, ys, refs):
            calls[0] += 1
            if calls[0] == step and _rank() == rank:
                print(f"FAULT: rank {rank} killed at rollout step {step}", file=sys.stderr, flush=True)
                _die()
            return orig(self, ys, refs)

        R.PatchedState.advance = advance_or_die
    elif kind == "ckpt-mid-write":
        import builtins

        from meshgnn import checkpoint as C

        nth, seen = int(args[0]), [0]

        class HalfWriter:  # writes half of the bytes, syncs them to disk, then the process dies
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                mv = memoryview(data).cast("B")
                self.f.write(mv[: len(mv) // 2])
                self.f.flush()
                os.fsync(self.f.fileno())
                print(f"FAULT: killed half-way through writing checkpoint {nth}", file=sys.stderr, flush=True)
                _die()

        def open_with_fault(path, mode="r", *a, **k):
            f = builtins.open(path, mode, *a, **k)
            if "w" in mode:
                seen[0] += 1
                if seen[0] == nth:
                    return HalfWriter(f)
            return f

        C.open = open_with_fault        # checkpoint.save's open() resolves the module global first
    elif kind == "ckpt-before-rename":
        from meshgnn.io import atomic

        nth, seen = int(args[0]), [0]
        real_replace = os.replace

        class OsWithFault:  # the os module as meshgnn.io.atomic sees it, with a fault in replace()
            def __getattr__(self, name):
                return getattr(os, name)

            @staticmethod
            def replace(src, dst):
                if str(dst).endswith("checkpoint.pt"):
                    seen[0] += 1
                    if seen[0] == nth:
                        print(f"FAULT: killed before renaming checkpoint {nth}", file=sys.stderr, flush=True)
                        _die()
                return real_replace(src, dst)

        atomic.os = OsWithFault()
    else:
        raise SystemExit(f"rel_fault.py: unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from meshgnn.cli import main

    sys.exit(main(sys.argv[2:]))
