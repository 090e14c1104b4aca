"""Triton kernels of meshgnn.ops, run on CPU tensors through the Triton interpreter (TRITON_INTERPRET=1).

The interpreter executes the same ``@triton.jit`` kernels that run on CUDA, so this checks their indexing, masking,
CSR walks and dtype handling without a GPU (not their GPU performance). It runs in a subprocess because
TRITON_INTERPRET must be set before the kernels are defined.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (optional extra 'triton')")

SCRIPT = """
    import torch
    from meshgnn.graph import Graph
    from meshgnn.ops import _triton as T

    def check(n, e, f, dtype, tol, seed):
        gen = torch.Generator().manual_seed(seed)
        ei = torch.stack([torch.randint(0, n, (e,), generator=gen), torch.randint(0, max(n - 2, 1), (e,), generator=gen)])
        g = Graph.from_edge_index(ei, n)
        v = torch.randn(e, f, generator=gen, dtype=torch.float64).to(dtype)
        a, b = (torch.randn(n, f, generator=gen, dtype=torch.float64).to(dtype) for _ in range(2))
        ref = torch.zeros(n, f, dtype=torch.float64).index_add_(0, g.receivers, v.double())
        torch.testing.assert_close(T.segment_sum(v, g.rowptr).double(), ref, rtol=tol, atol=tol)
        assert T.segment_sum(v, g.rowptr).dtype == dtype
        ref_perm = torch.zeros(n, f, dtype=torch.float64).index_add_(0, g.senders, v.double())
        got_perm = T.segment_sum(v, g.sender_rowptr, g.sender_perm)
        torch.testing.assert_close(got_perm.double(), ref_perm, rtol=tol, atol=tol)
        assert torch.equal(T.segment_expand(a, g.rowptr, e), a[g.receivers])
        fused = T.gather_add(a, b, v, g.senders, g.receivers, g.rowptr)
        unfused = a.double()[g.senders] + b.double()[g.receivers] + v.double()
        torch.testing.assert_close(fused.double(), unfused, rtol=tol, atol=tol)
        if dtype == torch.float32:  # same addition order as a[s] + b[r] + c
            assert torch.equal(fused, a[g.senders] + b[g.receivers] + v)
        if n:
            assert torch.all(T.segment_sum(v, g.rowptr)[n - 2:] == 0)  # no incoming edges

    for args in [(20, 90, 5, torch.float32, 1e-5, 0), (12, 40, 1, torch.float64, 1e-12, 1),
                 (10, 30, 130, torch.bfloat16, 3e-2, 2), (6, 0, 4, torch.float32, 0, 3)]:
        check(*args)

    # the launch tile changes neither the result nor a single bit of it (each row sums its edges in CSR order)
    gen = torch.Generator().manual_seed(7)
    ei = torch.stack([torch.randint(0, 37, (300,), generator=gen), torch.randint(0, 33, (300,), generator=gen)])
    g = Graph.from_edge_index(ei, 37)
    v, a = torch.randn(300, 40, generator=gen), torch.randn(37, 40, generator=gen)
    outs = []
    for tile in [(1, 64, 1), (4, 16, 2), (8, 128, 4)]:
        T.set_tile(*tile)
        outs.append((T.segment_sum(v, g.rowptr), T.segment_sum(v, g.sender_rowptr, g.sender_perm),
                     T.gather_add(a, a, v, g.senders, g.receivers, g.rowptr), T.segment_expand(a, g.rowptr, 300)))
    for other in outs[1:]:
        assert all(torch.equal(x, y) for x, y in zip(outs[0], other))
    print("triton-interpreted kernels OK")
"""


@pytest.mark.slow
def test_triton_kernels_interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton-interpreted kernels OK" in proc.stdout
