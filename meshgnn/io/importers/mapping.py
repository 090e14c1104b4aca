"""Field roles, units and node types for an import: from command-line flags and/or a small mapping file.

A mapping file is JSON (``.json``) or TOML (``.toml``); every key is optional, flags override it::

    {
      "state": ["U", "s"],                 # state fields (predicted), in this order
      "static": ["porosity"],              # static fields (read from the first step)
      "units": {"U": "m/s", "s": "1"},
      "dt": 0.05,                          # time step when the files carry no times
      "dirichlet": ["inlet", "wall"],      # node types whose state values the data prescribes
      "node_types": {
        "field": "patch_id",               # point-data column or cell-data region field (omit: patches)
        "values": {"1": "inlet", "2": "outlet", "3": "wall"},   # label value -> type name
        "patches": {"in*": "inlet", "cyl*": "obstacle"},         # patch / group name glob -> type name
        "priority": ["inlet", "outlet", "obstacle", "wall"]       # on shared nodes the first wins
      }
    }

``--node-types`` takes either a field name or ``glob=type,...`` pairs (patch globs, or label values).
Patches no rule matches fall back to :data:`DEFAULT_PATCH_RULES`; still unmatched ones leave their nodes interior.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field as _field
from pathlib import Path

import numpy as np

from ...errors import InputError

DEFAULT_PATCH_RULES = (("inlet*", "inlet"), ("outlet*", "outlet"), ("wall*", "wall"), ("obstacle*", "obstacle"),
                       ("packing*", "obstacle"), ("sphere*", "obstacle"))
# Earlier entries win where groups share nodes (as in the built-in generator: a rim node of the inlet and a
# wall is an inlet node, its value prescribed). Types not listed lose to all listed ones.
DEFAULT_PRIORITY = ("inlet", "outlet", "obstacle", "wall")
MAPPING_KEYS = {"state", "static", "units", "dt", "dirichlet", "node_types"}
NODE_TYPE_KEYS = {"field", "values", "patches", "priority"}


@dataclass
class NodeTypeRules:
    """How node types are assigned: a label field, value -> type names, patch globs -> type names, priority."""

    field: str | None = None
    values: dict[str, str] = _field(default_factory=dict)
    patches: list[tuple[str, str]] = _field(default_factory=list)
    priority: list[str] = _field(default_factory=lambda: list(DEFAULT_PRIORITY))

    def type_of_group(self, name: str) -> str | None:
        """Type name for a patch / group / label ``name`` (user rules, then defaults), or ``None``."""
        if name in self.values:
            return self.values[name]
        for pattern, type_name in list(self.patches) + list(DEFAULT_PATCH_RULES):
            if fnmatch.fnmatch(name.lower(), pattern.lower()):
                return type_name
        return None


@dataclass
class ImportOptions:
    """Everything the import needs besides the sources (flags merged over the mapping file)."""

    fmt: str = "auto"
    state: list[str] | None = None
    static: list[str] = _field(default_factory=list)
    units: dict[str, str] = _field(default_factory=dict)
    dt: float | None = None
    dirichlet: list[str] | None = None
    node_types: NodeTypeRules = _field(default_factory=NodeTypeRules)
    mesh: str | None = None
    tolerance: float | None = None
    drop_unreferenced: bool = False
    cell_data: bool = False


def load_mapping(path) -> dict:
    """Read a JSON or TOML mapping file; unknown keys are an error (they are usually typos)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "mapping file not found")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib
            data = tomllib.loads(path.read_text())
        else:
            data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(path, None, f"not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                         f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise InputError(path, None, "expected an object at the top level")
    unknown = set(data) - MAPPING_KEYS
    if unknown:
        raise InputError(path, sorted(unknown)[0], f"unknown key (expected one of {sorted(MAPPING_KEYS)})")
    nt = data.get("node_types", {})
    if isinstance(nt, str):
        nt = {"field": nt}
    if not isinstance(nt, dict) or set(nt) - NODE_TYPE_KEYS:
        raise InputError(path, "node_types", f"expected an object with keys {sorted(NODE_TYPE_KEYS)}")
    data["node_types"] = nt
    return data


def parse_pairs(text: str, flag: str) -> dict[str, str]:
    """``"a=b,c=d"`` -> ``{"a": "b", "c": "d"}``."""
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, val = item.partition("=")
        if not sep or not key.strip() or not val.strip():
            raise InputError(flag, None, f"expected NAME=VALUE pairs separated by commas, got '{item}'")
        out[key.strip()] = val.strip()
    return out


def parse_list(text: str | None) -> list[str] | None:
    return None if text is None else [s.strip() for s in text.split(",") if s.strip()]


def build_options(fmt="auto", mapping=None, state=None, static=None, units=None, node_types=None, dt=None,
                  dirichlet=None, mesh=None, tolerance=None, drop_unreferenced=False, cell_data=False
                  ) -> ImportOptions:
    """Merge flag values (strings as typed) over a mapping file into :class:`ImportOptions`."""
    m = load_mapping(mapping) if mapping else {}
    nt = m.get("node_types", {})
    rules = NodeTypeRules(field=nt.get("field"),
                          values={str(k): str(v) for k, v in nt.get("values", {}).items()},
                          patches=[(str(k), str(v)) for k, v in nt.get("patches", {}).items()],
                          priority=list(nt.get("priority", DEFAULT_PRIORITY)))
    if node_types:
        if "=" in node_types:
            pairs = parse_pairs(node_types, "--node-types")
            rules.values.update({k: v for k, v in pairs.items() if not any(c in k for c in "*?[")})
            rules.patches = [(k, v) for k, v in pairs.items()] + rules.patches
        else:
            rules.field = node_types.strip()
    opts = ImportOptions(
        fmt=fmt,
        state=parse_list(state) if state is not None else m.get("state"),
        static=parse_list(static) if static is not None else list(m.get("static", [])),
        units={**{str(k): str(v) for k, v in m.get("units", {}).items()},
               **(parse_pairs(units, "--units") if units else {})},
        dt=dt if dt is not None else m.get("dt"),
        dirichlet=parse_list(dirichlet) if dirichlet is not None else m.get("dirichlet"),
        node_types=rules, mesh=mesh, tolerance=tolerance, drop_unreferenced=drop_unreferenced,
        cell_data=cell_data)
    both = set(opts.state or []) & set(opts.static)
    if both:
        raise InputError("--state/--static", sorted(both)[0], "listed both as state and as static")
    return opts


def assign_node_types(num_nodes: int, groups: dict[str, np.ndarray], rules: NodeTypeRules,
                      type_names: list[str]) -> tuple[np.ndarray, list[str], dict[str, str | None]]:
    """Node type codes from named node groups (patches, regions, label values).

    Args:
        num_nodes: N.
        groups: ``{group name: (n_g,) node ids}``.
        rules: patch / value rules; ``rules.priority`` decides shared nodes (earlier wins; unlisted types lose).
        type_names: known type names (code = index); new names from the rules are appended.
    Returns:
        ``(node_type (N,) int8, type_names, {group: type or None})``.
    """
    names = list(type_names)
    chosen = {g: rules.type_of_group(g) for g in groups}
    for t in chosen.values():
        if t is not None and t not in names:
            names.append(t)
    if len(names) > 127:
        raise InputError("--node-types", None, f"too many node types ({len(names)}; at most 127)")
    strength = {t: len(rules.priority) - i for i, t in enumerate(rules.priority)}   # unlisted: 0
    strength["interior"] = -1
    node_type = np.zeros(num_nodes, dtype=np.int8)
    # Paint the weakest groups first so that stronger types overwrite them on shared nodes.
    order = sorted((g for g in groups if chosen[g] is not None), key=lambda g: strength.get(chosen[g], 0))
    for g in order:
        node_type[groups[g]] = names.index(chosen[g])
    return node_type, names, chosen


def label_groups(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-node labels (ints or strings) -> ``{str(label): node ids}``."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("not integer-valued")
        labels = labels.astype(np.int64)
    uniq, inverse = np.unique(labels, return_inverse=True)
    return {str(u): np.flatnonzero(inverse == i) for i, u in enumerate(uniq)}


def codes_as_groups(labels: np.ndarray, rules: NodeTypeRules, type_names: list[str]) -> NodeTypeRules:
    """Rules where integer labels with no explicit mapping are codes into ``type_names`` (0 = interior)."""
    values = dict(rules.values)
    for code, name in enumerate(type_names):
        values.setdefault(str(code), name)
    return NodeTypeRules(field=rules.field, values=values, patches=rules.patches, priority=rules.priority)
