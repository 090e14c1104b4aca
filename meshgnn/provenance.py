"""Provenance: the command line that wrote a file, every option it resolved to, and where and when it ran.

The ``meshgnn`` command calls :func:`record` once after parsing; every command that writes a file stores
:func:`invocation` with it: ``import`` and ``generate`` in the dataset's ``provenance`` attribute, ``partition`` in
the part store's ``meta``, ``train`` and ``rollout`` in ``<out>/run.json`` (:func:`write_run_json`, with the
resolved run settings; earlier runs into the same folder, e.g. a resumed training, kept under ``history``).
The stored ``command`` is shell-quoted (``shlex.join``): ``shlex.split`` of it parses back to the same options.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import sys
from pathlib import Path

RUN_FILE = "run.json"
RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID", "RANK")
_JSON_SCALARS = (str, int, float, bool, type(None))

_current: dict | None = None


def json_options(args) -> dict:
    """The JSON-able values of an argparse namespace (or dict): internal entries (``_module``) and sentinels
    (options left unset) left out; tuples become lists."""
    items = vars(args).items() if not isinstance(args, dict) else args.items()
    out = {}
    for k, v in items:
        if k.startswith("_"):
            continue
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, _JSON_SCALARS) or (isinstance(v, list) and all(isinstance(x, _JSON_SCALARS) for x in v)):
            out[k] = v
    return out


def record(argv, args=None, extra: dict | None = None) -> dict:
    """Remember this process's invocation: ``argv`` (the arguments after ``meshgnn``) and the parsed ``args``;
    ``extra`` (e.g. the thread choice) is stored beside them. Returns :func:`invocation`."""
    global _current
    _current = {
        "command": shlex.join(["meshgnn", *map(str, argv)]),
        "argv": [str(a) for a in argv],
        "options": json_options(args) if args is not None else {},
        "meshgnn_version": _version(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cwd": os.getcwd(),
        "started_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    return invocation()


def invocation() -> dict:
    """A copy of the recorded invocation; outside the ``meshgnn`` command (library use) one made from
    ``sys.argv``: ``{"command", "argv", "options", "meshgnn_version", "python", "host", "cwd", "started_utc"}``."""
    if _current is None:
        return record(sys.argv[1:])
    return json.loads(json.dumps(_current))


def write_run_json(folder, settings: dict | None = None, name: str = RUN_FILE) -> Path:
    """Write ``<folder>/run.json``: :func:`invocation` plus ``settings`` (the resolved run configuration);
    a previous run.json's entries move to its ``history`` list. Atomic (temporary file + rename)."""
    from .io.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    entry = {**invocation(), "settings": json.loads(json.dumps(settings or {}, default=str))}
    history = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            history = list(old.pop("history", [])) + [old]
        except (OSError, ValueError):
            history = []
    with atomic_path(path, suffix=".json") as tmp:
        Path(tmp).write_text(json.dumps({**entry, "history": history}, indent=1, default=str) + "\n")
    return path


def read_run_json(folder, name: str = RUN_FILE) -> dict:
    """The ``run.json`` of a run folder."""
    return json.loads((Path(folder) / name).read_text())


def is_root_process(env=None) -> bool:
    """False on the ranks > 0 of an MPI / Slurm / torchrun launch (only rank 0 writes run.json)."""
    env = os.environ if env is None else env
    for var in RANK_VARS:
        v = env.get(var)
        if v is not None and v.strip().isdigit():
            return int(v) == 0
    return True


def _version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:
        return "unknown"
