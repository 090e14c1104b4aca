"""integrators/: Butcher tableaus, the generic RK stepper, observed convergence orders, autograd safety.

Orders are fitted (log-log slope of the final-time max error against dt, float64) on a linear ODE system with
complex eigenvalues, two nonlinear ODEs and a P1-FEM heat equation on a tetrahedral box mesh with Dirichlet
faces held by ``constrain``; every method must land within 0.2 of its theoretical order.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.integrate import solve_ivp

from meshgnn.integrators import (METHODS, Tableau, TableauError, get_method, integrate, load_tableau,
                         receptive_field_hops, rk_stages, rk_step)

DISTINCT_METHODS = sorted({m.name for m in METHODS.values()})
BASE_STEPS = {1: 100, 2: 40, 3: 40, 4: 20}  # coarsest step count per order: asymptotic yet far above round-off

RALSTON_JSON = {"name": "ralston", "A": [["0", "0"], ["2/3", "0"]], "b": ["1/4", "3/4"], "c": ["0", "2/3"],
                "order": 2}


# ---------------------------------------------------------------- test problems (float64, exact references)

@dataclass
class Problem:
    name: str
    rate: Callable
    y0: np.ndarray
    T: float
    exact: np.ndarray
    constrain: Callable | None = None


def linear_system() -> Problem:
    """y' = M y, M with two pairs of complex eigenvalues and a coupling; exact y(T) = expm(M T) y0."""
    M = np.array([[-0.1, 1.5, 0.0, 0.2],
                  [-1.5, -0.1, 0.1, 0.0],
                  [0.0, 0.0, -0.3, 2.0],
                  [0.1, 0.0, -2.0, -0.3]])
    y0, T = np.array([1.0, 0.5, -0.3, 0.8]), 2.0
    Mt = torch.tensor(M)
    return Problem("linear", lambda y: Mt @ y, y0, T, scipy.linalg.expm(M * T) @ y0)


def nonlinear_rotation() -> Problem:
    """y' = (1 + |y|^2) J y: |y| is conserved, so y(T) is y0 rotated by (1 + |y0|^2) T (closed form)."""
    y0, T = np.array([0.6, 0.8]), 1.5
    angle = (1.0 + y0 @ y0) * T
    R = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])

    def rate(y):
        return (1.0 + (y * y).sum()) * torch.stack([-y[1], y[0]])
    return Problem("rotation", rate, y0, T, R @ y0)


def lotka_volterra() -> Problem:
    """Predator-prey; reference from DOP853 at rtol 1e-13."""
    a, b, c, d = 1.5, 1.0, 3.0, 1.0
    y0, T = np.array([1.0, 1.0]), 2.0
    ref = solve_ivp(lambda t, y: [a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]], (0.0, T), y0,
                    method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]

    def rate(y):
        return torch.stack([a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]])
    return Problem("lotka_volterra", rate, y0, T, ref)


def p1_stiffness_and_lumped_mass(points, tets):
    """P1 FEM stiffness K (N, N) (dense; small meshes) and lumped mass m (N,)."""
    K, m = np.zeros((len(points),) * 2), np.zeros(len(points))
    for tet in tets:
        J = (points[tet[1:]] - points[tet[0]]).T            # columns: edge vectors from vertex 0
        G = np.linalg.inv(J)                                  # rows: gradients of barycentric 1..3
        grads = np.vstack([-G.sum(0), G])
        volume = abs(np.linalg.det(J)) / 6.0
        K[np.ix_(tet, tet)] += volume * grads @ grads.T
        m[tet] += volume / 4.0
    return K, m


def heat_on_tetra_mesh() -> Problem:
    """u' = -kappa M_L^-1 K u on a 5x5x5-node tet box; u = 1 on x = 0, u = 0 on x = 1 (held by constrain).

    Exact: the free nodes obey the affine ODE u_F' = B u_F + r; expm of [[B, r], [0, 0]] gives u_F(T).
    """
    from meshgnn.meshes import box_tets  # structured box, each cube split into 6 tets (Kuhn)

    points, tets = box_tets(5)
    K, m = p1_stiffness_and_lumped_mass(points, tets)
    L = -0.05 * K / m[:, None]
    dirichlet = (points[:, 0] == 0.0) | (points[:, 0] == 1.0)
    g = np.where(points[:, 0] == 0.0, 1.0, 0.0)
    free = ~dirichlet
    u0 = np.where(dirichlet, g, np.sin(np.pi * points[:, 0]) * np.cos(np.pi * points[:, 1]) + points[:, 2])
    nf, T = int(free.sum()), 1.0
    augmented = np.zeros((nf + 1, nf + 1))
    augmented[:nf, :nf] = L[np.ix_(free, free)]
    augmented[:nf, nf] = L[np.ix_(free, dirichlet)] @ g[dirichlet]
    exact = g.copy()
    exact[free] = (scipy.linalg.expm(augmented * T) @ np.append(u0[free], 1.0))[:nf]
    Lt, mask, gt = torch.tensor(L), torch.tensor(dirichlet), torch.tensor(g)
    return Problem("heat_tetra", lambda u: Lt @ u, u0, T, exact, lambda u: torch.where(mask, gt, u))


PROBLEMS = {p.__name__: p for p in (linear_system, nonlinear_rotation, lotka_volterra, heat_on_tetra_mesh)}


@pytest.fixture(scope="module")
def problems():
    return {name: make() for name, make in PROBLEMS.items()}


def final_error(problem: Problem, method, num_steps: int, constrain="problem") -> float:
    constrain = problem.constrain if constrain == "problem" else constrain
    y = torch.tensor(problem.y0)
    for y in integrate(problem.rate, y, num_steps, method, problem.T / num_steps, constrain):
        pass
    return float(np.abs(y.numpy() - problem.exact).max())


def observed_order(problem: Problem, method, **kw) -> float:
    tableau = get_method(method)
    steps = [BASE_STEPS[min(tableau.order, 4)] * 2 ** k for k in range(4)]
    errors = [final_error(problem, tableau, n, **kw) for n in steps]
    return np.polyfit(np.log([problem.T / n for n in steps]), np.log(errors), 1)[0]


# ---------------------------------------------------------------- convergence orders

@pytest.mark.parametrize("problem_name", list(PROBLEMS))
@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_observed_order_matches_theory(problems, problem_name, method):
    order = observed_order(problems[problem_name], method)
    print(f"{problem_name} {method}: observed order {order:.3f} (theory {get_method(method).order})")
    assert abs(order - get_method(method).order) < 0.2


def test_constraining_only_the_output_loses_the_order(problems):
    """Negative control: Dirichlet values drifting inside the stages drop rk4 to first order on the heat mesh."""
    heat = problems["heat_on_tetra_mesh"]
    steps, errors = [20, 40, 80, 160], []
    for n in steps:
        y = torch.tensor(heat.y0)
        for _ in range(n):
            y = heat.constrain(rk_step(heat.rate, y, "rk4", heat.T / n))
        errors.append(np.abs(y.numpy() - heat.exact).max())
    assert np.polyfit(np.log(steps), -np.log(errors), 1)[0] < 1.5
    assert observed_order(heat, "rk4") > 3.8


def test_user_tableau_from_json_converges_at_its_order(problems, tmp_path):
    path = tmp_path / "ralston.json"
    path.write_text(json.dumps(RALSTON_JSON))
    for spec in (path, str(path)):
        tableau = get_method(spec)
        assert tableau.name == "ralston" and tableau.stages == 2 and tableau.c == (0.0, 2.0 / 3.0)
    assert abs(observed_order(problems["linear_system"], str(path)) - 2) < 0.2
    assert abs(observed_order(problems["lotka_volterra"], path) - 2) < 0.2


def test_json_copy_of_rk4_steps_identically(problems, tmp_path):
    path = tmp_path / "rk4_copy.json"
    path.write_text(json.dumps(dict(get_method("rk4").to_dict(), name="my_rk4")))
    heat = problems["heat_on_tetra_mesh"]
    y = torch.tensor(heat.y0)
    assert torch.equal(rk_step(heat.rate, y, path, 0.05, heat.constrain),
                       rk_step(heat.rate, y, "rk4", 0.05, heat.constrain))


# ---------------------------------------------------------------- tableau validation and lookup

@pytest.mark.parametrize("spec, message", [
    (dict(A=[[0.5]], b=[1], c=[0.5], order=1), r"A\[0\]\[0\] = 0.5 is on or above the diagonal"),
    (dict(A=[[0, 1], [1, 0]], b=[0.5, 0.5], c=[1, 1], order=1), r"A\[0\]\[1\] .* above the diagonal"),
    (dict(A=[[0, 0], [1, 0]], b=[0.5, 0.5], c=[0, 0.5], order=1), r"c\[1\] = 0.5 but row 1 of A sums to 1"),
    (dict(A=[[0, 0], [1, 0]], b=[0.5, 0.6], c=[0, 1], order=1), r"b sums to 1.1, must sum to 1"),
    (dict(A=[[0, 0], [1, 0]], b=[0.5, 0.5, 0], c=[0, 1], order=1), r"len\(c\) = 2 but len\(b\) = 3"),
    (dict(A=[[0, 0], [1]], b=[0.5, 0.5], c=[0, 1], order=1), r"A must be a square 2x2 matrix, row 1"),
    (dict(A=[[0]], b=[1], c=[0], order=0), r"order must be a positive integer"),
    (dict(A=[[0, 0], [1, 0]], b=[0.5, float("nan")], c=[0, 1], order=1), r"b\[1\] = nan is not finite"),
    (dict(A=[[0, 0], [1, 0]], b=["1/2", "half"], c=[0, 1], order=1), r"b\[1\] = 'half' is not a number"),
    (dict(A=[[0, 0], [1, 0]], b=[1, 0], c=[0, 1], order=2), r"claims order 2 but sum b_i c_i = 0.0"),
    (dict(A=[[0, 0], [1, 0]], b=[0.5, 0.5], c=[0, 1], order=3), r"claims order 3 but sum b_i c_i\^2"),
])
def test_invalid_tableau_raises_one_line_value_error(spec, message):
    with pytest.raises(ValueError, match=message) as raised:
        Tableau("bad", **spec)
    assert isinstance(raised.value, TableauError) and "\n" not in str(raised.value)


def test_every_builtin_is_valid_explicit_and_claims_its_order():
    for name, tableau in METHODS.items():
        assert tableau == Tableau(**tableau.to_dict())  # re-validates and round-trips
        assert all(tableau.A[i][j] == 0.0 for i in range(tableau.stages) for j in range(i, tableau.stages))
    assert [get_method(n).stages for n in ("euler", "heun", "midpoint", "heun3", "ssprk3", "rk4")] == \
        [1, 2, 2, 3, 3, 4]
    assert get_method("heun3").c == (0.0, 1 / 3, 2 / 3) and get_method("heun3").b == (0.25, 0.0, 0.75)


def test_get_method_lookup():
    assert get_method("heun2") is get_method("heun") is get_method(" HEUN ")
    tableau = Tableau(**RALSTON_JSON)
    assert get_method(tableau) is tableau
    with pytest.raises(ValueError, match="unknown integrator 'rk5'; choose one of euler, heun, heun2, midpoint, "
                                         "heun3, ssprk3, rk4"):
        get_method("rk5")


def test_load_tableau_errors_name_the_file(tmp_path):
    assert load_tableau(RALSTON_JSON) == Tableau(**RALSTON_JSON)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken.json: not valid JSON"):
        get_method(broken)
    with pytest.raises(ValueError, match=r"missing.json: cannot read"):
        get_method(str(tmp_path / "missing.json"))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"name": "x", "A": [[0]], "B": [1], "c": [0], "order": 1}))
    with pytest.raises(ValueError, match=r"partial.json: missing b; unknown B"):
        get_method(partial)
    implicit = tmp_path / "implicit.json"
    implicit.write_text(json.dumps({"name": "backward_euler", "A": [[1]], "b": [1], "c": [1], "order": 1}))
    with pytest.raises(ValueError, match=r"implicit.json: backward_euler: A\[0\]\[0\] = 1.0 is on or above"):
        get_method(implicit)


def test_receptive_field_hops_is_layers_times_stages():
    assert receptive_field_hops(15, "heun3") == 45
    assert [receptive_field_hops(2, m) for m in ("euler", "heun", "midpoint", "ssprk3", "rk4")] == [2, 4, 4, 6, 8]
    with pytest.raises(ValueError):
        receptive_field_hops(-1, "rk4")


# ---------------------------------------------------------------- stepper semantics

def mlp_rate(width=3, seed=0):
    """A small nonlinear rate with parameters, for autograd tests."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(width, 8), torch.nn.Tanh(), torch.nn.Linear(8, width)).double()
    return net


def dirichlet_constrain(mask, value):
    return lambda y: torch.where(mask, value, y)


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_constrain_is_applied_to_every_stage_input_and_the_output(method):
    y = torch.randn(6, 3, dtype=torch.float64)
    mask = torch.zeros(6, 1, dtype=torch.bool)
    mask[[0, 4]] = True
    constrain = dirichlet_constrain(mask, torch.tensor(2.5, dtype=torch.float64))
    seen = []

    def rate(z):  # non-zero on the held rows, so an unconstrained stage input would differ there
        seen.append(z)
        return torch.sin(z) + 1.0
    y_next = rk_step(rate, y, method, 0.3, constrain)
    assert len(seen) == get_method(method).stages
    for z in seen:
        assert torch.all(z[[0, 4]] == 2.5)
    assert torch.all(y_next[[0, 4]] == 2.5)
    assert torch.equal(y_next[[1, 2, 3, 5]], rk_step(rate, constrain(y), method, 0.3, constrain)[[1, 2, 3, 5]])
    seen.clear()
    unconstrained = rk_step(rate, y, method, 0.3)
    assert not torch.equal(unconstrained[[0, 4]], y_next[[0, 4]])  # negative control


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_nothing_is_modified_in_place(method):
    net = mlp_rate()
    y = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    y_before, version = y.detach().clone(), y._version
    inputs, outputs = [], []

    def rate(z):
        k = net(z)
        inputs.append((z, z.detach().clone(), z._version))
        outputs.append((k, k.detach().clone(), k._version))
        return k
    constrain = dirichlet_constrain(torch.tensor([[True], [False], [False], [False], [True]]),
                                    torch.tensor(0.0, dtype=torch.float64))
    y_next = rk_step(rate, y, method, 0.1, constrain)
    y_next.square().sum().backward()
    assert y._version == version and torch.equal(y.detach(), y_before)
    for tensor, copy, version in inputs + outputs:
        assert tensor._version == version and torch.equal(tensor.detach(), copy)


def test_in_place_callbacks_are_rejected():
    y = torch.ones(4, dtype=torch.float64)

    def mutating_constrain(z):
        z[0] = 0.0
        return z

    def mutating_rate(z):
        return z.mul_(2.0)
    with pytest.raises(ValueError, match="constrain modified its input in place"):
        rk_step(lambda z: -z, y, "heun", 0.1, mutating_constrain)
    with pytest.raises(ValueError, match="rate modified its input in place"):
        rk_step(mutating_rate, y, "heun", 0.1)
    with pytest.raises(ValueError):  # numpy stage inputs are read-only views
        rk_step(lambda z: -z, np.ones(4), "heun", 0.1, lambda z: np.put(z, 0, 0.0) or z)


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_gradients_flow_through_all_stages(method):
    """gradcheck (float64, finite differences) w.r.t. the state and a rate parameter, with a constraint."""
    W = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, False]] * 4)

    def step(y, W):
        return rk_step(lambda z: torch.tanh(z @ W) * z, y, method, 0.2,
                       lambda z: torch.where(mask, torch.zeros_like(z), z))
    assert torch.autograd.gradcheck(step, (y, W))
    assert torch.autograd.gradcheck(lambda y, W: rk_step(lambda z: torch.tanh(z @ W) * z, y, method, 0.2,
                                                         checkpoint_stages=True), (y, W))


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_checkpoint_stages_gives_the_same_values_and_gradients(method):
    results = []
    for checkpoint_stages in (False, True):
        net = mlp_rate()
        calls = []
        y = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True)

        def rate(z):
            calls.append(1)
            return net(z)
        y_next = rk_step(rate, y, method, 1.0, dirichlet_constrain(torch.arange(7)[:, None] < 2, y.detach()),
                         checkpoint_stages=checkpoint_stages)
        forward_calls = len(calls)
        y_next.pow(3).sum().backward()
        results.append((y_next.detach(), y.grad, [p.grad for p in net.parameters()], forward_calls, len(calls)))
    (v0, gy0, gp0, f0, c0), (v1, gy1, gp1, f1, c1) = results
    torch.testing.assert_close(v1, v0, rtol=0, atol=0)
    torch.testing.assert_close(gy1, gy0, rtol=1e-14, atol=1e-14)
    for a, b in zip(gp1, gp0):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-14)
    stages = get_method(method).stages
    assert f0 == f1 == stages and c0 == stages and c1 == 2 * stages  # stages recomputed in backward


def test_checkpoint_stages_is_skipped_without_grad_and_refused_for_numpy():
    calls = []
    with torch.no_grad():
        rk_step(lambda z: calls.append(1) or -z, torch.ones(3), "rk4", 0.1, checkpoint_stages=True)
    assert len(calls) == 4
    with pytest.raises(ValueError, match="checkpoint_stages needs a torch.Tensor"):
        rk_step(lambda z: -z, np.ones(3), "rk4", checkpoint_stages=True)


@pytest.mark.parametrize("method", DISTINCT_METHODS)
def test_torch_and_numpy_paths_agree(method):
    rng = np.random.default_rng(3)
    y = rng.normal(size=(10, 2))
    held = np.zeros((10, 1), dtype=bool)
    held[:3] = True
    y_np = rk_step(lambda z: np.sin(z) * z[:, ::-1], y, method, 0.25, lambda z: np.where(held, 1.0, z))
    y_t = rk_step(lambda z: torch.sin(z) * z.flip(1), torch.tensor(y), method, 0.25,
                  lambda z: torch.where(torch.tensor(held), 1.0, z))
    assert isinstance(y_np, np.ndarray) and y_np.shape == y.shape
    np.testing.assert_allclose(y_t.numpy(), y_np, rtol=1e-14, atol=1e-15)
    assert np.all(y_np[:3] == 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, np.float32])
def test_dtype_is_preserved(dtype):
    y = torch.ones(3, dtype=dtype) if isinstance(dtype, torch.dtype) else np.ones(3, dtype=dtype)
    assert rk_step(lambda z: -z, y, "ssprk3", 0.1).dtype == y.dtype


def test_absorbed_dt_equals_explicit_dt():
    net, y = mlp_rate(), torch.randn(4, 3, dtype=torch.float64)
    for method in DISTINCT_METHODS:
        torch.testing.assert_close(rk_step(lambda z: 0.05 * net(z), y, method),
                                   rk_step(net, y, method, dt=0.05), rtol=1e-13, atol=1e-15)


def test_stages_with_zero_weight_are_skipped_only_where_exact():
    wasteful_euler = Tableau("wasteful_euler", A=[[0, 0], [1, 0]], b=[1, 0], c=[0, 1], order=1)
    calls = []
    y = torch.randn(5, dtype=torch.float64)
    out = rk_step(lambda z: calls.append(z) or torch.cos(z), y, wasteful_euler, 0.1)
    assert len(calls) == 1 and torch.equal(out, rk_step(torch.cos, y, "euler", 0.1))
    assert rk_stages(torch.cos, y, wasteful_euler, 0.1)[1] is None
    calls.clear()  # midpoint: b_0 = 0 but stage 1 reads stage 0, so both are evaluated
    rk_step(lambda z: calls.append(z) or torch.cos(z), y, "midpoint", 0.1)
    assert len(calls) == 2


def test_integrate_yields_each_state_of_the_rollout():
    net, y0 = mlp_rate(), torch.randn(4, 3, dtype=torch.float64)
    states = list(integrate(net, y0, 3, "heun3", 0.1))
    expected, y = [], y0
    for _ in range(3):
        y = rk_step(net, y, "heun3", 0.1)
        expected.append(y)
    assert len(states) == 3 and all(torch.equal(a, b) for a, b in zip(states, expected))
    assert list(integrate(net, y0, 0, "rk4")) == []
    with pytest.raises(ValueError, match="num_steps"):
        integrate(net, y0, -1, "rk4")


def test_inference_mode_rollout_and_bad_rates():
    with torch.inference_mode():
        y = torch.ones(3, dtype=torch.float64)
        out = list(integrate(lambda z: -z, y, 2, "rk4", 0.1, lambda z: torch.where(z > 5, 5.0, z)))[-1]
    amplification = sum((-0.1) ** p / np.prod(range(1, p + 1)) for p in range(5))  # rk4 on y' = -y
    torch.testing.assert_close(out, torch.full((3,), amplification ** 2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"rate returned shape \(1, 3\) for a state of shape \(3,\)"):
        rk_step(lambda z: z[None], torch.ones(3), "euler")
    with pytest.raises(ValueError, match="rate returned ndarray for a Tensor state"):
        rk_step(lambda z: np.ones(3), torch.ones(3), "euler")
    with pytest.raises(TypeError, match="torch.Tensor or a numpy.ndarray"):
        rk_step(lambda z: z, [1.0, 2.0], "euler")


def test_numpy_output_is_writable_even_with_an_identity_constrain():
    y = np.ones(3)
    out = rk_step(lambda z: -z, y, "heun", 0.1, lambda z: z)
    out[0] = 7.0  # the read-only protection covers callback inputs only
    assert y[0] == 1.0 and out.flags.writeable
