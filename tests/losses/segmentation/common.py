"""Shared checks of the segmentation losses' tests."""

from __future__ import annotations

import torch

import losslab


def assert_compiled_equals_eager(name: str, logits: torch.Tensor, target: torch.Tensor,
                                 **hparams) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.compile(create(name, **hparams), fullgraph=True)`` (no graph break) gives the
    eager value and gradient w.r.t. ``logits`` to 1e-12 (fp64 inputs); returns the eager
    ``(value, gradient)`` for further checks."""
    m = losslab.create(name, **hparams)
    leaf = logits.detach().clone().requires_grad_(True)
    eager = m(leaf, target)
    (g_eager,) = torch.autograd.grad(eager.sum(), leaf)
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)(leaf, target)
    (g_compiled,) = torch.autograd.grad(compiled.sum(), leaf)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_compiled, g_eager, rtol=1e-12, atol=1e-12)
    return eager, g_eager
