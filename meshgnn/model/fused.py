"""The MLPs of MeshGraphNets with a fused CPU path: bias + ReLU in the GEMM, ReLU backward + bias gradient in one pass.

Eager PyTorch runs ``Linear -> ReLU`` on CPU as ``addmm`` (copy the bias into the output, then a GEMM that reads
it back) and ``clamp_min`` (one more pass); its backward as ``threshold_backward`` and a separate ``sum`` for the
bias gradient. On (E, 128) edge latents those passes cost as much as a third of the GEMMs (docs/design.md,
"Fused MLPs"). :class:`MLP` is an ``nn.Sequential`` of ``[Linear, ReLU] * k, Linear[, LayerNorm]`` (same modules
and state dict as before) whose fp32 CPU forward runs the linear layers as one autograd function:

* forward: every hidden ``Linear + ReLU`` is one oneDNN matmul with the bias and the ReLU in its epilogue
  (``torch.ops.mkldnn._linear_pointwise``, the primitive inductor's CPU fusion uses); the last Linear too, with
  the bias only;
* backward: per layer the two GEMMs (``dW = gᵀ a``, ``dX = g W``) and one pass of
  :func:`meshgnn.ops.relu_backward_` that masks ``dX`` in place and returns the previous layer's bias gradient.

Saved for backward: each Linear's input, as autograd saves. Anything else (fp64, bf16 autocast, CUDA,
``torch.compile`` tracing, no oneDNN) takes the plain module-by-module path, so results there are unchanged.
The fused path equals the plain one up to fp32 rounding (different GEMM kernel and summation order;
tests/test_fused_mlp.py).

Shapes: M rows (edges or nodes), F features.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .. import ops


def _linear_pointwise():
    """oneDNN's fused linear (``mkldnn._linear_pointwise``) if this torch has it, else None."""
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):     # a torch build without the op: the plain path everywhere
        return None


_LINEAR = _linear_pointwise()


class _LinearChain(torch.autograd.Function):
    """``Linear_n(ReLU(...ReLU(Linear_1(ReLU?(x)))))`` with fused epilogues (module doc). Inputs: ``x (M, F0)``,
    ``pre_relu`` (apply a ReLU to ``x`` first: ``x`` is then a pre-activation), then ``W_1, b_1, ..., W_n, b_n``."""

    @staticmethod
    def forward(ctx, x, pre_relu: bool, *params):
        weights, biases = params[0::2], params[1::2]
        a = torch.relu(x) if pre_relu else x
        inputs = []
        for i, (w, b) in enumerate(zip(weights, biases)):
            inputs.append(a)
            a = _LINEAR.default(a, w, b, "relu" if i < len(weights) - 1 else "none", [], "")
        ctx.pre_relu = pre_relu
        ctx.save_for_backward(*inputs, *weights)
        return a

    @staticmethod
    def backward(ctx, grad):
        n = len(ctx.saved_tensors) // 2
        inputs, weights = ctx.saved_tensors[:n], ctx.saved_tensors[n:]
        need = ctx.needs_input_grad
        grads_w, grads_b = [None] * n, [None] * n
        g = grad.contiguous()
        bias_grad = g.sum(0) if need[2 + 2 * (n - 1) + 1] else None
        g_x = None
        for i in reversed(range(n)):
            if need[2 + 2 * i]:
                grads_w[i] = g.t().mm(inputs[i])
            grads_b[i] = bias_grad
            if i == 0 and not need[0]:
                break
            g_in = g.mm(weights[i])
            if i > 0:   # inputs[i] is the ReLU output of layer i - 1: mask and that layer's bias gradient at once
                bias_grad = ops.relu_backward_(g_in, inputs[i], colsum=need[2 + 2 * (i - 1) + 1])
            elif ctx.pre_relu:
                ops.relu_backward_(g_in, inputs[0], colsum=False)
            g = g_x = g_in
        out = [g_x, None]
        for gw, gb in zip(grads_w, grads_b):
            out += [gw, gb]
        return tuple(out)


class MLP(nn.Sequential):
    """``[Linear, ReLU] * k, Linear`` and an optional ``LayerNorm``, with the fused CPU path of the module doc.

    ``mlp(x)`` is the whole MLP; ``mlp.after_first(h)`` continues from the first Linear's output ``h`` (the
    concat trick computes that Linear itself, see :class:`meshgnn.model.mgn.GraphNetBlock`).
    """

    fused = True   # class-wide switch (benchmarks and tests turn it off to compare)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, 0)

    def after_first(self, h: torch.Tensor) -> torch.Tensor:
        """``(M, F)`` first-Linear output -> MLP output: the modules after the first one."""
        return self._run(h, 1)

    def _linears(self) -> Optional[list[nn.Linear]]:
        mods = list(self)
        end = len(mods) - (1 if mods and not isinstance(mods[-1], nn.Linear) else 0)
        body = mods[:end]
        if len(body) % 2 != 1 or not all(isinstance(m, nn.Linear) for m in body[0::2]) or \
                not all(type(m) is nn.ReLU for m in body[1::2]):
            return None
        return body[0::2]

    def _fusable(self, x: torch.Tensor) -> bool:
        return (self.fused and _LINEAR is not None and x.device.type == "cpu" and x.dtype == torch.float32
                and x.dim() == 2 and x.shape[0] > 0 and not torch.is_autocast_enabled("cpu")
                and not torch.compiler.is_compiling()
                and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in self.parameters()))

    def _run(self, x: torch.Tensor, start: int) -> torch.Tensor:
        mods = list(self)
        linears = self._linears() if self._fusable(x) else None
        if linears is not None:
            linears = linears[(start + 1) // 2:]     # after_first: the chain starts at the second Linear
        if not linears or any(lin.bias is None for lin in linears):
            for m in mods[start:]:
                x = m(x)
            return x
        end = mods.index(linears[-1]) + 1            # modules [start, end) are the linear chain
        params = [t for lin in linears for t in (lin.weight, lin.bias)]
        x = _LinearChain.apply(x.contiguous(), start == 1, *params)
        for m in mods[end:]:
            x = m(x)
        return x
