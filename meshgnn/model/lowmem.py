"""Low-memory training of the MGN processor: checkpoint segments, compact saved activations, chunked edge backward.

Torch's per-layer activation checkpointing (``checkpoint_layers``) keeps the L block inputs ``(x_l, e_l)`` in the
compute dtype and, in backward, recomputes one whole block with autograd, holding all of that block's (E, H)
intermediates at once. This module runs the processor as one autograd function instead:

* **forward** (no autograd graph): block by block, the edge MLP in receiver-aligned chunks of edges, so no
  full-size intermediate but ``e_l`` and ``e_{l+1}`` exists. Saved: the node latents ``x_l`` and aggregates
  ``agg_l`` of every block ((N, H) each, small), and the edge latents ``e_l`` only at the start of each of the
  ``S`` segments (``k = ceil(L/S)`` blocks per segment; S = L is per-layer checkpointing).
* **backward**, segment by segment in reverse: the segment's edge latents are recomputed from its start with the
  edge MLP alone (the saved ``x_l`` make the node MLP unnecessary), then each block's gradient is computed: the
  node MLP's from the saved ``x_l, agg_l``, then the edge MLP's chunk by chunk (recompute with autograd, backward,
  accumulate), so one chunk's intermediates live at a time.
* ``storage="bfloat16"`` saves ``x_l, agg_l, e_l`` (and the recomputed segment interiors) in bf16; the compute
  stays in the model dtype. Gradients then differ from the exact ones by bf16 rounding of the saved values
  (measured in tests/test_checkpoint_segments.py and benchmarks/RESULTS.md "Memory per node"); the forward pass,
  hence the loss, is unchanged. ``storage="float32"`` (keep the compute dtype) is exact: gradients equal
  backprop without checkpointing up to floating-point summation order.

Parameter gradients are accumulated into ``.grad`` inside the backward (as torch's reentrant checkpoint does), so
use ``loss.backward()``, not ``torch.autograd.grad``. Autocast state is recorded in forward and restored for every
recompute. Memory model and plan choice: :mod:`meshgnn.plan`.

Shapes: N nodes, E receiver-sorted edges, H latent size.
"""
from __future__ import annotations

import math
import weakref
from typing import NamedTuple, Optional

import torch
from torch import nn

from .. import ops
from ..graph import Graph

STORAGE = ("float32", "bfloat16")
_CHUNKS: dict = {}   # id(graph.rowptr) -> (weakref to it, {edges_per_chunk: chunks}); entries die with the rowptr


class Chunk(NamedTuple):
    """Edges ``p0:p1`` (all incoming edges of rows ``r0:r1``) on the node window ``lo:hi`` that holds their senders
    and receivers; ``graph`` is the chunk's graph on that window (local node ids)."""

    p0: int
    p1: int
    r0: int
    r1: int
    lo: int
    hi: int
    graph: Graph


def edge_chunks(graph: Graph, edges_per_chunk: int) -> list[Chunk]:
    """Receiver-aligned edge chunks of about ``edges_per_chunk`` edges each, cached per graph.

    Each chunk's graph spans only the node window of its edges (for a mesh numbered along space, a thin slab),
    so per-chunk aggregation and gathers touch ``(hi - lo, H)`` node rows, not all N; a row's edges never straddle
    two chunks, so the chunks' segment sums are the rows of one segment sum, bit for bit.
    """
    key = id(graph.rowptr)
    entry = _CHUNKS.get(key)
    if entry is None or entry[0]() is not graph.rowptr:
        entry = (weakref.ref(graph.rowptr, lambda _, k=key: _CHUNKS.pop(k, None)), {})
        _CHUNKS[key] = entry
    per = entry[1]
    if edges_per_chunk in per:
        return per[edges_per_chunk]
    E = graph.num_edges
    n = max(1, math.ceil(E / max(edges_per_chunk, 1)))
    targets = torch.tensor([round(i * E / n) for i in range(1, n)], dtype=torch.int64)
    rowptr_cpu = graph.rowptr.cpu()
    rows = torch.searchsorted(rowptr_cpu, targets)
    bounds = sorted({0, E} | {int(rowptr_cpu[r]) for r in rows.tolist()})
    chunks = []
    for p0, p1 in zip(bounds[:-1], bounds[1:]):
        s, r = graph.senders[p0:p1], graph.receivers[p0:p1]
        r0, r1 = int(r[0]), int(r[-1]) + 1
        lo, hi = min(int(s.min()), r0), max(int(s.max()) + 1, r1)
        rp = (graph.rowptr[lo:hi + 1] - p0).clamp(0, p1 - p0)
        chunks.append(Chunk(p0, p1, r0, r1, lo, hi, Graph(s - lo, r - lo, rp, hi - lo)))
    per[edges_per_chunk] = chunks
    return chunks


def _projections(block, x: torch.Tensor):
    """Concat trick: :meth:`GraphNetBlock.node_projections`, ``(N, H)`` each; ``(None, None)`` without it."""
    return block.node_projections(x) if block.concat_trick else (None, None)


def _edge_tail(block, x, a, b, e_chunk: torch.Tensor, cg: Graph) -> torch.Tensor:
    """The edge MLP output ``(p1 - p0, H)`` of one chunk from the node-window rows ``x`` (no concat trick) or
    ``a, b`` (concat trick) — the operations of ``GraphNetBlock._update_edges``."""
    if not block.concat_trick:
        return block.edge_mlp(torch.cat([x[cg.senders], x[cg.receivers], e_chunk], dim=-1))
    h = ops.gather_add(a, b, block.edge_projection(e_chunk), cg)
    return block.edge_mlp.after_first(h)


def _window(t, ch: Chunk):
    return None if t is None else t[ch.lo:ch.hi]


def _new_edges(block, x, e, chunks, with_agg: bool, out_dtype=None):
    """``e + edge_mlp(...)`` ``(E, H)`` chunk by chunk (in ``out_dtype``, default the sum's dtype), and the aggregate
    ``(N, H)`` of the edge MLP outputs (``block.aggregate == "update"``) or of ``e + edge_mlp(...)`` (``"state"``).
    ``e`` may be stored compactly: each chunk is read in ``x``'s dtype."""
    a, b = _projections(block, x)
    e_next, agg = None, None
    for ch in chunks:
        ec = e[ch.p0:ch.p1].to(x.dtype)
        ne = _edge_tail(block, _window(x, ch), _window(a, ch), _window(b, ch), ec, ch.graph)
        piece = ec + ne
        if with_agg:
            if agg is None:
                agg = ne.new_zeros((x.shape[0],) + tuple(ne.shape[1:]))
            summed = ne if block.aggregate == "update" else piece
            agg[ch.r0:ch.r1] = ops.segment_sum(summed, ch.graph.rowptr)[ch.r0 - ch.lo:ch.r1 - ch.lo]
        if e_next is None:
            e_next = piece.new_empty((e.shape[0],) + tuple(piece.shape[1:]), dtype=out_dtype or piece.dtype)
        e_next[ch.p0:ch.p1] = piece
        del ec, ne, piece
    return e_next, agg


def _block_backward(block, x_s, e_s, agg_s, gx, ge, chunks, dtype, own_ge: bool):
    """Gradients ``(dL/dx_l, dL/de_l)`` of one block from its saved inputs and the output gradients; parameter
    gradients are accumulated into ``.grad``. ``ge`` None means zero; with ``own_ge`` it is updated in place."""
    x = x_s.to(dtype).detach().requires_grad_()
    agg = agg_s.to(dtype).detach().requires_grad_()
    new_x = block.node_mlp(torch.cat([x, agg], dim=-1))
    torch.autograd.backward(new_x, gx)
    g_agg = agg.grad
    del agg, new_x
    if block.concat_trick:
        a, b = _projections(block, x)
        nodes = (a.detach(), b.detach())
    else:
        a = b = None
        nodes = (x.detach(),)
    g_nodes = [torch.zeros_like(t) for t in nodes]      # gradients of a, b (or of x through the gathers)
    ge_in = ge if own_ge else None
    for ch in chunks:
        p0, p1 = ch.p0, ch.p1
        leaves = [t[ch.lo:ch.hi].detach().requires_grad_() for t in nodes]
        ec = e_s[p0:p1].to(dtype).detach().requires_grad_()
        if block.concat_trick:
            ne = _edge_tail(block, None, leaves[0], leaves[1], ec, ch.graph)
        else:
            ne = _edge_tail(block, leaves[0], None, None, ec, ch.graph)
        g_ne = g_agg[ch.lo:ch.hi][ch.graph.receivers]
        if ge is not None:
            g_ne += ge[p0:p1]
        torch.autograd.backward(ne, g_ne.to(ne.dtype))
        for g, leaf in zip(g_nodes, leaves):
            g[ch.lo:ch.hi] += leaf.grad
        if ge_in is None:
            ge_in = torch.empty((e_s.shape[0],) + tuple(ec.grad.shape[1:]), dtype=ec.grad.dtype, device=ec.device)
        # the residual's identity path: e_{l+1} = e_l + ne carries ge; with "state" aggregation the aggregate sums
        # e_l too, so it carries ge + g_agg[receivers] = g_ne
        if block.aggregate == "state":
            torch.add(g_ne.to(ec.grad.dtype), ec.grad, out=ge_in[p0:p1])
        elif ge is None:
            ge_in[p0:p1] = ec.grad
        elif own_ge:
            ge_in[p0:p1] += ec.grad
        else:
            torch.add(ge[p0:p1], ec.grad, out=ge_in[p0:p1])
        del ne, g_ne, ec, leaves
    if a is not None:
        torch.autograd.backward([a, b], g_nodes)
        return gx + x.grad, ge_in
    return gx + x.grad + g_nodes[0], ge_in


class _Processor(torch.autograd.Function):
    """All processor blocks as one function (see module doc). Inputs: ``x0 (N, H), e0 (E, H)``, the parameters
    (only so the engine calls backward when they alone need gradients)."""

    @staticmethod
    def forward(ctx, x, e, blocks, graph, segments, storage, edges_per_chunk, *params):
        chunks = edge_chunks(graph, edges_per_chunk)
        store = (lambda t: t.to(torch.bfloat16)) if storage == "bfloat16" else (lambda t: t)
        L = len(blocks)
        k = math.ceil(L / segments)
        xs, aggs, seg_e = [], [], {}
        for i, block in enumerate(blocks):
            if i % k == 0:
                seg_e[i] = store(e)
            e_next, agg = _new_edges(block, x, e, chunks, with_agg=True)
            xs.append(store(x))
            aggs.append(store(agg))
            x = x + block.node_mlp(torch.cat([x, agg], dim=-1))
            e = e_next
        ctx.set_materialize_grads(False)     # the last edge latents are usually unused: no (E, H) of zeros
        ctx.blocks, ctx.chunks, ctx.k = blocks, chunks, k
        ctx.storage_dtype = torch.bfloat16 if storage == "bfloat16" else None
        ctx.dtype = x.dtype
        ctx.device_type = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        # kept on ctx, not save_for_backward, so backward can free each segment's tensors once it is done
        ctx.xs, ctx.aggs, ctx.seg_e = xs, aggs, seg_e
        ctx.L = L
        return x, e

    @staticmethod
    def backward(ctx, gx, ge):
        L, k, blocks, chunks = ctx.L, ctx.k, ctx.blocks, ctx.chunks
        xs, aggs, seg_e = ctx.xs, ctx.aggs, ctx.seg_e
        enabled, adtype = ctx.autocast
        if gx is None:
            gx = torch.zeros_like(xs[-1], dtype=ctx.dtype)
        gx = gx.contiguous()
        ge = None if ge is None else ge.contiguous()
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=adtype, enabled=enabled):
            own = False
            for start in sorted(seg_e, reverse=True):
                stop = min(start + k, L)
                es = {start: seg_e.pop(start)}
                with torch.no_grad():       # the segment's interior edge latents, from its start, chunk by chunk
                    for i in range(start, stop - 1):
                        es[i + 1], _ = _new_edges(blocks[i], xs[i].to(ctx.dtype), es[i], chunks, with_agg=False,
                                                  out_dtype=ctx.storage_dtype or es[i].dtype)
                for i in reversed(range(start, stop)):
                    gx, ge = _block_backward(blocks[i], xs[i], es.pop(i), aggs[i], gx, ge, chunks, ctx.dtype, own)
                    own = True
                    xs[i] = aggs[i] = None
        n_params = len(ctx.needs_input_grad) - 7
        return (gx, ge, None, None, None, None, None) + (None,) * n_params


@torch.compiler.disable
def run_processor(blocks: nn.ModuleList, x: torch.Tensor, e: torch.Tensor, graph: Graph, segments: int,
                  storage: str = "float32", edges_per_chunk: Optional[int] = None):
    """``(x_L (N, H), e_L (E, H))`` of the processor with segment checkpointing (see module doc).

    ``segments`` in 1..L (clipped); ``storage`` ``"float32"`` (the compute dtype, exact) or ``"bfloat16"``;
    ``edges_per_chunk`` default ``max(4096, ceil(E / 16))``.
    """
    if storage not in STORAGE:
        raise ValueError(f"checkpoint storage must be one of {', '.join(STORAGE)}, got {storage!r}")
    L = len(blocks)
    segments = min(max(int(segments), 1), L)
    if edges_per_chunk is None:
        edges_per_chunk = max(4096, math.ceil(graph.num_edges / 16))
    params = [p for p in blocks.parameters() if p.requires_grad]
    return _Processor.apply(x, e, blocks, graph, segments, storage, edges_per_chunk, *params)


class _Rowwise(torch.autograd.Function):
    """A row-wise module (``out[i]`` depends on ``inp[i]`` only, e.g. the edge encoder MLP) without saved
    intermediates: forward in row chunks without autograd; backward recomputes and back-propagates chunk by
    chunk, accumulating parameter gradients into ``.grad``."""

    @staticmethod
    def forward(ctx, module, inp, rows, *params):
        out = None
        for r0 in range(0, inp.shape[0], rows):
            piece = module(inp[r0:r0 + rows])
            if out is None:
                out = piece.new_empty((inp.shape[0],) + tuple(piece.shape[1:]))
            out[r0:r0 + rows] = piece
        ctx.module, ctx.rows = module, rows
        ctx.device_type = inp.device.type
        ctx.autocast = (torch.is_autocast_enabled(inp.device.type), torch.get_autocast_dtype(inp.device.type))
        ctx.save_for_backward(inp)
        return out

    @staticmethod
    def backward(ctx, grad):
        (inp,) = ctx.saved_tensors
        enabled, adtype = ctx.autocast
        g_inp = torch.empty_like(inp) if ctx.needs_input_grad[1] else None
        with torch.enable_grad(), torch.autocast(ctx.device_type, dtype=adtype, enabled=enabled):
            for r0 in range(0, inp.shape[0], ctx.rows):
                chunk = inp[r0:r0 + ctx.rows].detach().requires_grad_(g_inp is not None)
                out = ctx.module(chunk)
                torch.autograd.backward(out, grad[r0:r0 + ctx.rows].to(out.dtype))
                if g_inp is not None:
                    g_inp[r0:r0 + ctx.rows] = chunk.grad
        return (None, g_inp, None) + (None,) * (len(ctx.needs_input_grad) - 3)


@torch.compiler.disable
def rowwise_checkpoint(module: nn.Module, inp: torch.Tensor, rows: Optional[int] = None) -> torch.Tensor:
    """``module(inp)`` ``(M, F) -> (M, H)`` for a row-wise module, recomputed in ``rows``-row chunks in backward
    (default ``max(4096, ceil(M / 16))``): one chunk's intermediates instead of the whole input's."""
    rows = rows or max(4096, math.ceil(inp.shape[0] / 16))
    params = [p for p in module.parameters() if p.requires_grad]
    return _Rowwise.apply(module, inp, rows, *params)
