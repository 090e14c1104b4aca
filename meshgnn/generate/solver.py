"""P1 finite elements on tetrahedra (scipy.sparse) for the packed-column physics.

1. Steady potential flow: ``-lap(phi) = 0``, inflow ``-d(phi)/dn = U`` on the inlet, ``phi = 0`` on the outlet,
   natural no-penetration on the wall and packing; velocity ``u = -grad(phi)`` (piecewise constant per tet, so
   the discrete divergence ``sum_e V_e u_e . grad N_j`` vanishes at every node off the inlet and outlet).
2. Transient CO2 uptake (gas concentration ``c``, loading ``q`` on the packing, mol/m^3 of column)::

       dc/dt + u . grad c = D lap c - r,    dq/dt = r,    r = k c (1 - q / q_max)

   ``c = c_in`` on the inlet, zero diffusive flux elsewhere, ``c = q = 0`` at t = 0. Advection-diffusion uses
   Kuzmin's discrete upwinding (the low-order algebraic flux correction operator: minimal artificial diffusion
   making the operator an M-matrix, so the scheme is positivity preserving and bounded by c_in); time stepping is
   backward Euler for transport with the reaction rate coefficient ``k (1 - q^n/q_max)`` taken at the old
   loading, then ``q^{n+1} = q^n + dt r`` with the same rate (exactly mass-conserving, q non-decreasing).
   Linear systems: CG (flow) and BiCGStab (transport) with Jacobi preconditioning, warm-started.

Assembly streams over tetrahedra in chunks into one CSR pattern (the mesh graph plus the diagonal), so memory
stays O(nnz) for multi-million-node meshes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import MeshgnnError

# Local (row, col) pairs of the 4x4 element matrix, flattened.
_PAIRS = np.array([(a, b) for a in range(4) for b in range(4)], dtype=np.int64)
_UPPER = _PAIRS[_PAIRS[:, 0] < _PAIRS[:, 1]]                                   # the 6 tet edges, a < b
_DIAG_SLOTS = np.flatnonzero(_PAIRS[:, 0] == _PAIRS[:, 1])
_UPPER_SLOTS = np.flatnonzero(_PAIRS[:, 0] < _PAIRS[:, 1])
_LOWER_SLOTS = np.array([4 * b + a for a, b in _UPPER])                         # (b, a) of each upper (a, b)
TET_CHUNK = 1 << 20


def limit_blas_threads(threads: int = 1) -> bool:
    """Set the thread count of the OpenBLAS copies numpy/scipy loaded (ctypes; no-op where not found).

    The iterative solvers' vector operations are memory bound; threaded BLAS dot products on a shared, busy
    machine spin and slowed CG ~3x in measurements. Returns whether any library was set.
    """
    import ctypes

    done = False
    try:
        with open("/proc/self/maps") as f:
            libs = {line.split()[-1] for line in f if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return False
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(ctypes.c_int(threads))
                done = True
                break
    return done


def tet_geometry(points: np.ndarray, tets: np.ndarray):
    """Volumes (M,) and P1 basis gradients (M, 4, 3) of tetrahedra ``tets`` (M, 4)."""
    x = points[tets]                                   # (M, 4, 3)
    edges = x[:, 1:, :] - x[:, :1, :]                  # rows x_k - x_0
    det = np.linalg.det(edges)
    if np.any(det == 0):
        raise MeshgnnError(f"{int(np.count_nonzero(det == 0))} degenerate (zero-volume) tetrahedra")
    inv = np.linalg.inv(edges)                         # columns are grad(lambda_k), k = 1..3
    grads = np.empty((tets.shape[0], 4, 3))
    grads[:, 1:, :] = np.transpose(inv, (0, 2, 1))
    grads[:, 0, :] = -grads[:, 1:, :].sum(axis=1)
    return np.abs(det) / 6.0, grads


class P1Space:
    """CSR sparsity pattern (mesh edges + diagonal) and streaming element assembly.

    Each tetrahedron's 6 upper-triangle entries are located in the pattern once (a CSR lookup in C) and kept as
    ``tet_edge_pos`` (M, 6); lower entries follow from the transpose permutation, diagonals from ``diag``.

    Args:
        points: (N, 3) float64.  tets: (M, 4) int64.  edge_index: (2, E) receiver-sorted mesh edges.
    """

    def __init__(self, points, tets, edge_index, chunk: int = TET_CHUNK):
        self.points, self.tets, self.chunk = points, tets, chunk
        n = self.num_nodes = points.shape[0]
        diag = np.arange(n, dtype=np.int64)
        keys = np.concatenate([edge_index[1] * n + edge_index[0], diag * n + diag])
        keys.sort()
        self.indices = keys % n
        rows = keys // n
        del keys
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
        pos_type = np.int32 if self.nnz < 2**31 else np.int64
        # a CSR matrix whose values are the data positions: lookups by (row, col) run in scipy's C code
        self._lookup = sp.csr_array((np.arange(self.nnz, dtype=np.float64), self.indices, self.indptr),
                                    shape=(n, n))
        self._lookup.has_sorted_indices = True
        self.diag = self.position(diag, diag)
        step = 8 * self.chunk
        self.transpose = np.concatenate([self.position(self.indices[lo:lo + step], rows[lo:lo + step])
                                         for lo in range(0, self.nnz, step)])
        del rows
        self._stiffness = None
        self.tet_edge_pos = np.empty((tets.shape[0], 6), dtype=pos_type)
        self.mass = np.zeros(n)                        # lumped mass: sum of V/4 over adjacent tets
        for lo, hi in self._chunks():
            t = tets[lo:hi]
            self.tet_edge_pos[lo:hi] = self.position(t[:, _UPPER[:, 0]], t[:, _UPPER[:, 1]])
            vol, _ = tet_geometry(points, t)
            self.mass += np.bincount(t.ravel(), np.repeat(vol / 4.0, 4), minlength=n)

    @property
    def nnz(self) -> int:
        return self.indices.size

    def _chunks(self):
        m = self.tets.shape[0]
        return [(lo, min(lo + self.chunk, m)) for lo in range(0, m, self.chunk)]

    def position(self, rows, cols) -> np.ndarray:
        """CSR data positions of entries (rows, cols) (all must be in the pattern), shaped like ``rows``."""
        rows, cols = np.asarray(rows), np.asarray(cols)
        found = self._lookup[rows.ravel(), cols.ravel()]
        return np.asarray(found, dtype=np.int64).reshape(rows.shape)

    def matrix(self, data) -> sp.csr_matrix:
        n = self.num_nodes
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(n, n))

    def _element_positions(self, lo: int, hi: int) -> np.ndarray:
        """(m, 16) data positions of the element matrix entries, in ``_PAIRS`` order."""
        upper = self.tet_edge_pos[lo:hi].astype(np.int64)
        pos = np.empty((hi - lo, 16), dtype=np.int64)
        pos[:, _DIAG_SLOTS] = self.diag[self.tets[lo:hi]]
        pos[:, _UPPER_SLOTS] = upper
        pos[:, _LOWER_SLOTS] = self.transpose[upper]
        return pos

    def assemble(self, element_matrix) -> np.ndarray:
        """CSR data of ``sum_e A_e`` for ``element_matrix(lo, hi, vol, grads) -> (m, 4, 4)``."""
        data = np.zeros(self.nnz)
        for lo, hi in self._chunks():
            vol, grads = tet_geometry(self.points, self.tets[lo:hi])
            values = element_matrix(lo, hi, vol, grads).reshape(-1, 16)
            pos = self._element_positions(lo, hi)
            data += np.bincount(pos.ravel(), values.ravel(), minlength=self.nnz)
        return data

    def stiffness(self) -> np.ndarray:
        """CSR data of the Laplacian stiffness ``K_ij = int grad N_i . grad N_j`` (assembled once, cached)."""
        if self._stiffness is None:
            self._stiffness = self.assemble(lambda lo, hi, vol, g: vol[:, None, None]
                                            * np.einsum("mak,mbk->mab", g, g))
        return self._stiffness


@dataclass
class Flow:
    """Potential flow for unit inlet velocity: element velocities (M, 3), nodal velocities (N, 3), convection
    matrix data ``C_ij = int N_i u . grad N_j`` (nnz,), potential (N,), inlet and outlet flux (m^3/s per m/s of
    inlet velocity), per-node outflow (N,) (nonzero on outlet nodes only), discrete divergence (N,) off the inlet
    and outlet (0 up to the CG tolerance), CG iterations and seconds."""

    element_velocity: np.ndarray
    node_velocity: np.ndarray
    convection: np.ndarray
    potential: np.ndarray
    inlet_flux: float
    outlet_flux: float
    outflow: np.ndarray
    divergence: np.ndarray
    iterations: int
    seconds: float


def _jacobi(diag: np.ndarray) -> spla.LinearOperator:
    inv = 1.0 / diag
    return spla.LinearOperator((diag.size, diag.size), matvec=lambda x: inv * x.ravel(), dtype=np.float64)


def solve_flow(space: P1Space, inlet_faces, inlet_nodes, outlet_nodes, rtol: float = 1e-10) -> Flow:
    """Unit-inflow potential flow on ``space`` (see the module doc)."""
    t0 = time.perf_counter()
    n = space.num_nodes
    stiff = space.stiffness()
    x = space.points[inlet_faces]
    area = 0.5 * np.linalg.norm(np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), axis=1)
    load = np.bincount(inlet_faces.ravel(), np.repeat(area / 3.0, 3), minlength=n)
    free = np.ones(n, dtype=bool)
    free[outlet_nodes] = False
    k = space.matrix(stiff)
    k_ff = k[free][:, free].tocsr()
    iters = [0]
    phi_f, info = spla.cg(k_ff, load[free], rtol=rtol, atol=0.0, maxiter=20 * n,
                          M=_jacobi(k_ff.diagonal()), callback=lambda _: iters.__setitem__(0, iters[0] + 1))
    if info != 0:
        raise MeshgnnError(f"potential flow: CG did not converge ({info} iterations)")
    phi = np.zeros(n)
    phi[free] = phi_f
    residual = k @ phi - load                          # nodal net outflow: 0 inside, -flux at the outlet

    rows = []

    def convection(lo, hi, vol, grads):
        u = -np.einsum("mak,ma->mk", grads, phi[space.tets[lo:hi]])
        rows.append(u)
        return np.broadcast_to((vol[:, None] / 4.0)[:, :, None] * np.einsum("mk,mbk->mb", u, grads)[:, None, :],
                               (hi - lo, 4, 4))

    conv = space.assemble(convection)
    u_elem = np.concatenate(rows)
    vol_sum = np.zeros(n)
    u_node = np.zeros((n, 3))
    for lo, hi in space._chunks():
        vol, _ = tet_geometry(space.points, space.tets[lo:hi])
        t = space.tets[lo:hi].ravel()
        vol_sum += np.bincount(t, np.repeat(vol, 4), minlength=n)
        for d in range(3):
            u_node[:, d] += np.bincount(t, np.repeat(vol * u_elem[lo:hi, d], 4), minlength=n)
    u_node /= vol_sum[:, None]
    outflow = np.zeros(n)
    outflow[outlet_nodes] = -residual[outlet_nodes]
    divergence = residual.copy()
    divergence[inlet_nodes] = 0.0
    divergence[outlet_nodes] = 0.0
    return Flow(u_elem, u_node, conv, phi, float(load.sum()), float(outflow.sum()),
                outflow, divergence, iters[0], time.perf_counter() - t0)


@dataclass
class UptakeParameters:
    """Transport parameters of one trajectory (SI units)."""

    inlet_velocity: float = 0.1      # m/s superficial gas velocity at the inlet
    inlet_co2: float = 4.0           # mol/m^3 (about 10 % CO2 at 1 atm)
    capacity: float = 80.0           # q_max, mol/m^3 of column
    rate: float = 5.0                # k, 1/s
    dispersion: float = 1e-5         # D, m^2/s


def low_order_operator(space: P1Space, flow: Flow, p: UptakeParameters) -> np.ndarray:
    """CSR data of ``L`` with ``M dc/dt = L c``: ``-U C - D K`` plus Kuzmin's discrete upwinding diffusion."""
    k = -p.inlet_velocity * flow.convection
    if p.dispersion:
        k = k - p.dispersion * space.stiffness()
    off = np.ones(space.nnz, dtype=bool)
    off[space.diag] = False
    d = np.maximum(0.0, np.maximum(-k, -k[space.transpose]))
    d[~off] = 0.0
    lo = k + d
    rowsum_d = np.add.reduceat(d, space.indptr[:-1]) if space.nnz else d
    lo[space.diag] -= rowsum_d
    return lo


def substeps_for(space: P1Space, operator: np.ndarray, dt: float, courant: float, rate: float = 0.0,
                 reaction_step: float = 0.5, quantile: float = 0.9) -> int:
    """Backward-Euler sub-steps per recorded step ``dt``.

    Backward Euler is unconditionally stable here (M-matrix), so sub-steps serve accuracy only: the uptake's
    time scale (``dt_sub * rate <= reaction_step``) and a Courant number ``dt_sub * |L_ii| / M_i <= courant`` on
    the ``quantile`` of nodes (the fastest few percent, slivers at the packing, do not set the step; the gas phase
    is quasi-steady against the loading front, which backward Euler reproduces at any step).
    """
    node_rate = float(np.quantile(-operator[space.diag] / space.mass, quantile))
    return max(1, int(np.ceil(dt * max(node_rate / courant, rate / reaction_step))))


def simulate_uptake(space: P1Space, flow: Flow, p: UptakeParameters, inlet_nodes, steps: int, dt: float,
                    substeps: int, rtol: float = 1e-8):
    """Yield ``(co2 (N,), loading (N,), seconds)`` for frames 0 .. steps-1, ``dt`` apart.

    ``seconds`` is the wall time spent computing that frame (0 for the initial state).
    """
    n = space.num_nodes
    op = low_order_operator(space, flow, p)
    h = dt / substeps
    c = np.zeros(n)
    q = np.zeros(n)
    c[inlet_nodes] = p.inlet_co2
    inlet_rows = np.zeros(n, dtype=bool)
    inlet_rows[inlet_nodes] = True
    row_of = np.repeat(np.arange(n), np.diff(space.indptr))
    base = -op
    base[inlet_rows[row_of]] = 0.0                      # Dirichlet rows: identity
    base_diag = base[space.diag]
    # t = 0: fresh packing (no loading) under an established gas flow — the absorption-limited steady gas
    # profile, reached by pseudo-time stepping with the loading held at zero. Starting from an empty column
    # instead puts the gas-filling transient (a front crossing many mesh edges per recorded frame, over in one
    # or two frames) into the data as an unlearnable first step.
    diag0 = np.where(inlet_rows, 1.0, base_diag + space.mass * (1.0 / h + p.rate))
    data = base.copy()
    data[space.diag] = diag0
    matrix0 = space.matrix(data)
    for _ in range(50 * substeps):
        rhs = np.where(inlet_rows, p.inlet_co2, space.mass * c / h)
        c_new, info = spla.bicgstab(matrix0, rhs, x0=c, rtol=rtol, atol=0.0, maxiter=10 * n, M=_jacobi(diag0))
        if info != 0:
            raise MeshgnnError(f"transport: initial gas profile: BiCGStab did not converge (info={info})")
        c_new = np.maximum(c_new, 0.0)
        done = np.abs(c_new - c).max() <= 1e-6 * p.inlet_co2
        c = c_new
        if done:
            break
    yield c.copy(), q.copy(), 0.0
    for _ in range(1, steps):
        t0 = time.perf_counter()
        for _ in range(substeps):
            a = p.rate * (1.0 - q / p.capacity)         # reaction rate coefficient at the old loading
            diag = np.where(inlet_rows, 1.0, base_diag + space.mass * (1.0 / h + a))
            data = base.copy()
            data[space.diag] = diag
            rhs = np.where(inlet_rows, p.inlet_co2, space.mass * c / h)
            c_new, info = spla.bicgstab(space.matrix(data), rhs, x0=c, rtol=rtol, atol=0.0,
                                        maxiter=10 * n, M=_jacobi(diag))
            if info != 0:
                raise MeshgnnError(f"transport: BiCGStab did not converge (info={info})")
            c = np.maximum(c_new, 0.0)                  # remove solver round-off below zero
            q = np.minimum(q + h * a * c, p.capacity)
        yield c.copy(), q.copy(), time.perf_counter() - t0


def front_speed(geom_volume: float, height: float, inlet_area: float, p: UptakeParameters) -> float:
    """Speed (m/s) of a sharp saturation front: the gas flux carries c_in, the column stores c_in + q_max."""
    interstitial = p.inlet_velocity * inlet_area * height / geom_volume
    return interstitial * p.inlet_co2 / (p.inlet_co2 + p.capacity)
