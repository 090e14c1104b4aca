"""Per-field boundary conditions: the schema, the OpenFOAM condition parser, and a prescribed value held exactly
through a multi-stage rollout while the free field evolves (with a negative control: the free field's nodes
of the same type are not held)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meshgnn.io.dataset import Dataset, DatasetWriter, FieldSpec
from meshgnn.io.importers.openfoam import boundary_conditions
from meshgnn.io.importers.series import dirichlet_from_conditions
from meshgnn.simulator import FieldLayout, Simulator


def _grid_dataset(path, dirichlet_fields, steps=4):
    """A 6x6x2 hex grid: two state fields a (1), b (2); 'wall' nodes on x = 0, 'outlet' on x = max."""
    n = 6
    xs, ys, zs = np.meshgrid(np.arange(n), np.arange(n), np.arange(2), indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], 1).astype(float)
    idx = np.arange(len(pts)).reshape(n, n, 2)
    hexes = [[idx[i, j, 0], idx[i + 1, j, 0], idx[i + 1, j + 1, 0], idx[i, j + 1, 0],
              idx[i, j, 1], idx[i + 1, j, 1], idx[i + 1, j + 1, 1], idx[i, j + 1, 1]]
             for i in range(n - 1) for j in range(n - 1)]
    nt = np.zeros(len(pts), int)
    nt[pts[:, 0] == 0] = 3
    nt[pts[:, 0] == n - 1] = 2
    rng = np.random.default_rng(0)
    with DatasetWriter(path, pts, {"hexahedron": np.array(hexes)}, nt, dt=0.1,
                       fields=[FieldSpec("a", "state", 1), FieldSpec("b", "state", 2)],
                       dirichlet_types=["wall"], dirichlet_fields=dirichlet_fields) as w:
        w.add_trajectory("0", steps + 1)
        for k in range(steps + 1):
            w.write_step("0", k, 0.1 * k, {"a": rng.normal(size=(len(pts), 1)), "b": rng.normal(size=(len(pts), 2))})
    return path


def test_schema_round_trip_and_fallback(tmp_path):
    p = _grid_dataset(tmp_path / "a.h5", {"a": ["wall"], "b": ["outlet", "wall"]})
    with Dataset(p) as ds:
        assert ds.dirichlet_fields == {"a": ["wall"], "b": ["outlet", "wall"]}
    q = _grid_dataset(tmp_path / "b.h5", None)          # no per-field attr: dirichlet_types for every field
    with Dataset(q) as ds:
        assert ds.dirichlet_fields == {"a": ["wall"], "b": ["wall"]}
    with pytest.raises(ValueError, match="not a state field"):
        _grid_dataset(tmp_path / "c.h5", {"zzz": ["wall"]})


def test_fixed_mask_is_per_component(tmp_path):
    p = _grid_dataset(tmp_path / "a.h5", {"a": ["wall"], "b": ["outlet"]})
    with Dataset(p) as ds:
        sim = Simulator(FieldLayout.from_dataset(ds), latent=8, layers=1, hidden_layers=1)
        nt = torch.from_numpy(np.asarray(ds.node_type, np.int64))
        m = sim.fixed_mask(nt)
        assert m.shape == (ds.num_nodes, 3)
        assert torch.equal(m[:, 0], nt == 3) and torch.equal(m[:, 1], nt == 2) and torch.equal(m[:, 2], nt == 2)


@pytest.mark.parametrize("integrator", ["heun3", "rk4"])
def test_prescribed_value_held_exactly_through_multistage_rollout(tmp_path, integrator):
    p = _grid_dataset(tmp_path / "a.h5", {"a": ["wall"], "b": ["outlet"]})
    with Dataset(p) as ds:
        sim = Simulator(FieldLayout.from_dataset(ds), latent=8, layers=2, hidden_layers=1, integrator=integrator)
        sim.eval()
        from meshgnn.domain import LocalDomain
        from meshgnn.distributed import Dist
        dom = LocalDomain(ds, None, Dist(), hops=sim.receptive_hops)
        patch = dom.patches[0]
        nt = patch.tensors.node_type
        fixed = sim.fixed_mask(nt)
        y = patch.frame("0", 0)
        static = patch.static("0")
        with torch.no_grad():
            for k in range(1, 5):
                ref = patch.frame("0", k)
                y = sim.step(y, static, patch.tensors, y_next_fixed=ref, fixed=fixed)
                wall, outlet = nt == 3, nt == 2
                assert torch.equal(y[wall, 0], ref[wall, 0])           # a on wall: the data's value, bit for bit
                assert torch.equal(y[outlet, 1:], ref[outlet, 1:])      # b on outlet
                # negative controls: the free components at the same nodes are the model's, not the data's
                assert not torch.equal(y[wall, 1:], ref[wall, 1:])
                assert not torch.equal(y[outlet, 0], ref[outlet, 0])


def test_openfoam_condition_parser_and_derivation(tmp_path):
    f = tmp_path / "U"
    f.write_text('FoamFile { class volVectorField; }\n// comment { type bogus; }\ninternalField uniform (0 0 0);\n'
                 'boundaryField\n{\n  inlet { type fixedValue; value uniform (1 0 0); }\n'
                 '  outlet\n  {\n    type zeroGradient;\n  }\n  "wall.*" { type noSlip; }\n'
                 '  side { type codedFixedValue; code { x; } }\n}\n')
    assert boundary_conditions(f) == {"inlet": "fixedValue", "outlet": "zeroGradient", "wall.*": "noSlip",
                                      "side": "codedFixedValue"}
    conds = {"U": {"in": "fixedValue", "w1": "noSlip", "w2": "zeroGradient", "out": "zeroGradient"},
             "p": {"in": "zeroGradient", "w1": "zeroGradient", "w2": "zeroGradient", "out": "fixedValue"}}
    chosen = {"in": "inlet", "w1": "wall", "w2": "wall", "out": "outlet"}
    # w2 is zeroGradient for U, so 'wall' (w1 + w2) does not prescribe U: every patch of a type must
    assert dirichlet_from_conditions(conds, chosen, ["U", "p"]) == {"U": ["inlet"], "p": ["outlet"]}
    assert dirichlet_from_conditions({}, chosen, ["U"]) is None
