"""The DeepMind MeshGraphNets dataset format (``meta.json`` + ``<split>.tfrecord``), read without TensorFlow: the
``meta.json`` field specs, TFRecord framing with checksums, and ``tf.train.Example`` records decoded into arrays
(protobuf classes and CRC from the ``tfrecord`` package). Facts as in DeepMind's ``meshgraphnets/dataset.py``;
see :mod:`.deepmind` for the import into a meshgnn dataset.
"""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from ...errors import InputError, MeshgnnError

FIELD_TYPES = ("static", "dynamic", "dynamic_varlen")
DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
          "uint64", "bool")
POSITIONS, CELLS = "mesh_pos", "cells"
_HEADER = 12         # uint64 length + uint32 masked CRC of it
_MAX_RECORD = 1 << 36


@dataclass(frozen=True)
class FieldMeta:
    """One entry of ``meta.json``'s ``features``: ``shape`` with -1 for the per-record count."""

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass
class Meta:
    path: Path
    fields: dict[str, FieldMeta]
    trajectory_length: int | None
    dt: float | None
    raw: dict


def is_deepmind(source) -> bool:
    """A folder holding ``meta.json``, or a ``.tfrecord`` file with ``meta.json`` beside it."""
    p = Path(source)
    if p.is_dir():
        return (p / "meta.json").is_file()
    return p.suffix == ".tfrecord" and (p.parent / "meta.json").is_file()


def read_meta(folder) -> Meta:
    """Parse and check ``<folder>/meta.json``; raises :class:`InputError` naming the file and the entry."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise InputError(path, None, "no such file (a DeepMind dataset folder holds meta.json and <split>.tfrecord)")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"not valid JSON: {str(e).splitlines()[0]}") from None
    feats = raw.get("features") if isinstance(raw, dict) else None
    if not isinstance(feats, dict) or not feats:
        raise InputError(path, "features", "expected an object {name: {type, shape, dtype}}")
    fields = {}
    for name, f in feats.items():
        if not isinstance(f, dict) or f.get("type") not in FIELD_TYPES:
            raise InputError(path, f"features/{name}/type", f"expected one of {', '.join(FIELD_TYPES)}, got "
                             f"{f.get('type') if isinstance(f, dict) else f!r}")
        shape = f.get("shape")
        if not isinstance(shape, list) or not shape or not all(isinstance(s, int) for s in shape) \
                or sum(s == -1 for s in shape) > 1 or any(s < -1 or s == 0 for s in shape):
            raise InputError(path, f"features/{name}/shape", f"expected a list of positive ints with at most one "
                             f"-1, got {shape!r}")
        m = re.search(r"(float|u?int)(8|16|32|64)|bool", str(f.get("dtype", "")))
        if m is None or m.group(0) not in DTYPES:
            raise InputError(path, f"features/{name}/dtype", f"expected one of {', '.join(DTYPES)}, "
                             f"got {f.get('dtype')!r}")
        fields[name] = FieldMeta(name, f["type"], tuple(shape), np.dtype(m.group(0)).newbyteorder("<"))
    length = raw.get("trajectory_length")
    if length is not None and (not isinstance(length, int) or length < 1):
        raise InputError(path, "trajectory_length", f"expected a positive int, got {length!r}")
    dt = raw.get("dt")
    if dt is not None and (not isinstance(dt, (int, float)) or not dt > 0):
        raise InputError(path, "dt", f"expected a positive number, got {dt!r}")
    for need in (POSITIONS, CELLS):
        if need not in fields:
            raise InputError(path, "features", f"no '{need}' field (have {', '.join(fields)}); meshgnn needs the "
                             f"mesh: {POSITIONS} and {CELLS}")
    return Meta(path, fields, length, None if dt is None else float(dt), raw)


def split_path(source, split: str) -> tuple[Path, Path]:
    """``(folder, tfrecord file)`` of ``source`` (a dataset folder, or a ``.tfrecord`` file in one)."""
    p = Path(source)
    folder, file = (p, p / f"{split}.tfrecord") if p.is_dir() else (p.parent, p)
    if not file.is_file():
        have = sorted(f.stem for f in folder.glob("*.tfrecord"))
        raise InputError(file, None, f"no such split file (splits here: {', '.join(have) or 'none'}); "
                         f"choose one with --split")
    return folder, file


def _tfrecord():
    """The ``tfrecord`` package (a meshgnn dependency; a one-line error where an install lacks it)."""
    try:
        import tfrecord
        import tfrecord.example_pb2
        import tfrecord.writer
    except ImportError as e:
        raise MeshgnnError(f"reading DeepMind datasets needs the 'tfrecord' package ({e}); pip install "
                           f"'tfrecord>=1.14'") from None
    return tfrecord


def iter_records(path) -> Iterator[tuple[int, bytes]]:
    """``(index, payload)`` of every record of a TFRecord file, checking both CRCs and the framing.

    Read here rather than by ``tfrecord.reader.tfrecord_iterator``, which does not check the checksums: a damaged
    record must be named, not imported. The CRCs are the ``tfrecord`` package's (``TFRecordWriter.masked_crc``).
    """
    crc = _tfrecord().writer.TFRecordWriter.masked_crc
    with open(path, "rb") as fh:
        k = 0
        while True:
            head = fh.read(_HEADER)
            if not head:
                return
            if len(head) < _HEADER:
                raise InputError(path, f"record {k}", f"truncated: {len(head)} of {_HEADER} header bytes")
            if crc(head[:8]) != head[8:]:
                raise InputError(path, f"record {k}", "corrupt: length checksum mismatch (damaged or not a "
                                 "TFRecord file)")
            (n,) = struct.unpack("<Q", head[:8])
            if n > _MAX_RECORD:
                raise InputError(path, f"record {k}", f"corrupt: implausible length {n}")
            data = fh.read(n)
            tail = fh.read(4)
            if len(data) < n or len(tail) < 4:
                raise InputError(path, f"record {k}", f"truncated: {len(data)} of {n} payload bytes")
            if crc(data) != tail:
                raise InputError(path, f"record {k}", "corrupt: payload checksum mismatch (the file is damaged)")
            yield k, data
            k += 1


def decode_record(payload: bytes, meta: Meta, path, index: int, names=None) -> dict[str, object]:
    """The fields of one record: ``{name: array}`` shaped by ``meta.json`` (``-1`` resolved), or for
    ``dynamic_varlen`` a list of per-step arrays. ``names``: decode only these (default: all)."""
    from google.protobuf.message import DecodeError

    example_pb2 = _tfrecord().example_pb2
    where = f"record {index}"
    try:
        ex = example_pb2.Example.FromString(payload)
    except DecodeError as e:
        raise InputError(path, where, f"corrupt: not a tf.train.Example ({e})") from None
    feats = ex.features.feature
    out = {}
    for name in names or meta.fields:
        fm = meta.fields[name]
        if name not in feats:
            raise InputError(path, f"{where}/{name}", f"missing feature (record has {', '.join(sorted(feats))})")
        raw = b"".join(feats[name].bytes_list.value)
        if len(raw) % fm.dtype.itemsize:
            raise InputError(path, f"{where}/{name}", f"{len(raw)} bytes are not a whole number of {fm.dtype.name}")
        flat = np.frombuffer(raw, dtype=fm.dtype)
        if fm.kind == "dynamic_varlen":
            out[name] = _split_varlen(flat, fm, feats, path, where)
            continue
        known = int(np.prod([s for s in fm.shape if s != -1]))
        if flat.size % known or (-1 not in fm.shape and flat.size != known):
            raise InputError(path, f"{where}/{name}", f"{flat.size} {fm.dtype.name} values do not fit shape "
                             f"{list(fm.shape)} from meta.json")
        out[name] = flat.reshape(fm.shape)
    return out


def _split_varlen(flat, fm: FieldMeta, feats, path, where) -> list[np.ndarray]:
    key = f"length_{fm.name}"
    if key not in feats:
        raise InputError(path, f"{where}/{key}", f"missing (dynamic_varlen field {fm.name} needs its row counts)")
    lengths = np.frombuffer(b"".join(feats[key].bytes_list.value), dtype="<i4").astype(np.int64)
    width = int(np.prod([s for s in fm.shape[1:] if s != -1])) if len(fm.shape) > 1 else 1
    if np.any(lengths < 0) or lengths.sum() * width != flat.size:
        raise InputError(path, f"{where}/{fm.name}", f"{flat.size} values do not match the row counts in {key} "
                         f"(sum {int(lengths.sum())} x {width})")
    rows = flat.reshape(-1, width)
    return np.split(rows, np.cumsum(lengths)[:-1])
