r"""Rationale invariance (family ``classification``, kind ``linear``): a regulariser on a linear
classifier that keeps each sample's per-class, per-feature contributions to the logits (its
*rationale*) close to the running mean rationale of its class, for domain generalisation.

With features :math:`f_i \in \mathbb{R}^D` and classifier weights :math:`W \in
\mathbb{R}^{C \times D}`, the logit of class :math:`c` is :math:`\sum_d W_{cd} f_{id}`; the
rationale of sample :math:`i` is the matrix of those summands, :math:`R_i = W \odot f_i \in
\mathbb{R}^{C \times D}` (row :math:`c` is :math:`W_c \odot f_i`). The paper asks the rationales
of one class to agree whatever the domain, by penalising their distance to a per-class
reference kept as an exponential moving average over training (:class:`RationaleInvarianceLoss`
keeps it; the functional form takes it as ``reference=``, or uses the batch's class means).

Paper: Chen, Zhang, Song, van den Hengel, Liu, "Domain Generalization via Rationale
Invariance", ICCV 2023, arXiv 2308.11158 (code: the authors' ``RIDG`` repository, the ``RIDG``
algorithm of its ``domainbed/algorithms.py``; defaults from its ``hparams_registry.py``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_matrix,
    check_reduction,
    check_same_device,
    compute_dtype,
    require,
    zero_loss,
)
from losslab._hparams import Int, Real, hparams
from losslab.registry import register

__all__ = ["RationaleInvarianceLoss", "class_mean_rationales", "rationale_invariance_loss"]

RIDG = "Domain Generalization via Rationale Invariance"


def _check_inputs(hidden: Tensor, weight: Tensor, target: Tensor,
                  ignore_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Validate; return hidden and weight in the compute dtype, the target (int64) and the mask
    of the rows that count."""
    check_matrix("weight", weight)
    check_matrix("hidden", hidden, dim=weight.shape[1], min_rows=0)
    if not isinstance(target, Tensor) or target.dtype == torch.bool or \
            target.is_floating_point() or target.is_complex():
        raise ValueError(f"target must be an integer tensor of class ids, got "
                         f"{getattr(target, 'dtype', type(target).__name__)}")
    if target.shape != (hidden.shape[0],):
        raise ValueError(f"target must have shape [{hidden.shape[0]}] (one class id per row of "
                         f"hidden), got {tuple(target.shape)}")
    check_same_device(hidden=hidden, weight=weight, target=target)
    target = target.long()
    valid = target != ignore_index
    c = weight.shape[0]
    require(~valid | ((target >= 0) & (target < c)),
            lambda: f"target must hold class ids in [0, {c}) or ignore_index={ignore_index}, "
                    f"got values in [{int(target.min())}, {int(target.max())}]")
    cd = compute_dtype(hidden.dtype)
    return hidden.to(cd), weight.to(cd), target, valid


def class_mean_rationales(hidden: Tensor, weight: Tensor, target: Tensor, *,
                          ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    r"""The batch's mean rationale of each class, :math:`\bar R_k = W \odot \bar f_k`
    (``[C, C, D]``; rows of absent classes are 0), and the bool ``[C]`` mask of the classes
    present. The rationale is linear in :math:`f`, so the class mean of :math:`R_i` is
    :math:`W` times the class-mean feature (no ``[N, C, D]`` tensor)."""
    h, w, t, valid = _check_inputs(hidden, weight, target, ignore_index)
    c = w.shape[0]
    t_safe = torch.where(valid, t, torch.zeros_like(t))
    counts = torch.zeros(c, dtype=h.dtype, device=h.device).index_add_(0, t_safe, valid.to(h.dtype))
    sums = torch.zeros(c, h.shape[1], dtype=h.dtype, device=h.device).index_add_(
        0, t_safe, h * valid.unsqueeze(1).to(h.dtype))
    mean_f = sums / counts.clamp_min(1).unsqueeze(1)
    return mean_f.unsqueeze(1) * w.unsqueeze(0), counts > 0


def rationale_invariance_loss(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    reference: Tensor | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Rationale invariance: squared distance of each sample's rationale to its class reference.

    .. math::
        d_i = \frac1C \sum_{c=1}^{C} \big\lVert W_c \odot f_i - \bar R_{y_i, c} \big\rVert_2^2,
        \qquad
        \mathcal L = \sum_{k \in \mathcal{Y}_B} \frac{1}{n_k} \sum_{i: y_i = k} d_i

    with :math:`\bar R_k \in \mathbb{R}^{C \times D}` the reference rationale of class :math:`k`
    (treated as a constant) and :math:`\mathcal{Y}_B` the classes of the batch. ``"mean"`` is
    this sum over the batch's classes of the within-class mean (the official code:
    ``((R[:, y == k] - bank[k]) ** 2).sum(dim=2).mean()`` summed over the classes present, which
    averages over the :math:`C` rows of the rationale too). The gradient reaches both the
    features and the classifier weights. The value is computed directly over row chunks of the
    ``[N, C, D]`` differences (bounded memory; the expanded quadratic form would cancel
    catastrophically when rationales sit near their reference), the gradient in closed form
    without them.

    RIDG trains with ``cross_entropy(logits, y) + 0.01 * rationale_invariance(f, W, y)`` and an
    EMA reference (:class:`RationaleInvarianceLoss`).

    Args:
        hidden: ``[N, D]`` features :math:`f` (the classifier's input).
        weight: ``[C, D]`` classifier weights :math:`W`.
        target: ``[N]`` class ids in ``[0, C)``; ``ignore_index`` rows are left out.
        bias: accepted for the ``linear`` kind's signature and unused (a bias adds the same
            constant to every sample's logit of a class, it is no part of a rationale).
        reference: ``[C, C, D]`` reference rationales :math:`\bar R_k` (detached here). Default:
            the batch's class means (:func:`class_mean_rationales`), the value the module's
            running reference starts from.
        ignore_index: target value of rows to skip (default -100).
        reduction: ``"mean"`` (the paper's sum of class means, above), ``"sum"`` (of
            :math:`d_i`) or ``"none"`` (``[N]``, 0 for ignored rows).

    Paper: Chen et al., "Domain Generalization via Rationale Invariance", arXiv 2308.11158.
    """
    del bias
    _check_rationale(ignore_index=ignore_index)
    check_reduction(reduction)
    h, w, t, valid = _check_inputs(hidden, weight, target, ignore_index)
    c, d = w.shape
    if reference is None:
        reference, _ = class_mean_rationales(hidden, weight, target, ignore_index=ignore_index)
    if not isinstance(reference, Tensor) or reference.shape != (c, c, d):
        got = tuple(reference.shape) if isinstance(reference, Tensor) else type(reference)
        raise ValueError(f"reference must be a [C, C, D] = [{c}, {c}, {d}] tensor of class "
                         f"rationales, got {got}")
    ref = reference.detach().to(h.dtype)
    t_safe = torch.where(valid, t, torch.zeros_like(t))
    per = _RationaleDistance.apply(h, w, t_safe, ref)
    assert isinstance(per, Tensor)
    per = torch.where(valid, per, torch.zeros_like(per))
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum() + zero_loss(hidden, weight)
    counts = torch.zeros(c, dtype=h.dtype, device=h.device).index_add_(0, t_safe, valid.to(h.dtype))
    class_sum = torch.zeros(c, dtype=h.dtype, device=h.device).index_add_(0, t_safe, per)
    return (class_sum / counts.clamp_min(1)).sum() + zero_loss(hidden, weight)


_check_rationale = hparams(ignore_index=Int())

#: Elements of one chunk of ``[rows, C, D]`` rationale differences in the forward pass.
_CHUNK_ELEMENTS = 1 << 22


class _RationaleDistance(torch.autograd.Function):
    """``d_i = mean_c |W_c * f_i - ref[t_i, c]|^2`` per row: the value computed directly, in row
    chunks of at most ``_CHUNK_ELEMENTS`` differences (exact, no cancellation), the gradient in
    closed form without the ``[N, C, D]`` tensor:
    ``dd/df_i = (2/C) (f_i * sum_c W_c^2 - sum_c W_c * ref[t_i, c])`` and
    ``dL/dW_c = (2/C) (W_c * sum_i g_i f_i^2 - sum_k (sum_{t_i = k} g_i f_i) * ref[k, c])``."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, w: Tensor, t: Tensor, ref: Tensor) -> Tensor:
        c, d = w.shape
        rows = max(1, _CHUNK_ELEMENTS // max(c * d, 1))
        out = h.new_empty(h.shape[0])
        for start in range(0, h.shape[0], rows):
            sl = slice(start, start + rows)
            diff = w.unsqueeze(0) * h[sl].unsqueeze(1) - ref[t[sl]]
            out[sl] = diff.pow(2).sum(dim=(1, 2)) / c
        ctx.save_for_backward(h, w, t, ref)
        return out

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> tuple[Tensor | None, ...]:
        g = grads[0]
        h, w, t, ref = ctx.saved_tensors
        c = w.shape[0]
        u = torch.einsum("cd,kcd->kd", w, ref)  # sum_c W_c * ref[k, c]
        dh = (2.0 / c) * g.unsqueeze(1) * (h * w.pow(2).sum(0) - u[t])
        gh = torch.zeros(ref.shape[0], h.shape[1], dtype=h.dtype, device=h.device).index_add_(
            0, t, g.unsqueeze(1) * h)
        dw = (2.0 / c) * (w * (g @ h.pow(2)) - torch.einsum("kd,kcd->cd", gh, ref))
        return dh, dw, None, None


@register(
    "rationale_invariance",
    family="classification",
    kind="linear",
    paper=RIDG,
    arxiv="2308.11158",
    summary="sum_k mean_{y_i=k} mean_c |W_c * f_i - EMA rationale of k|^2; momentum 0.001, "
    "weight 0.01 beside CE",
    degenerate=("all_ignored",),
    example_hparams={"num_classes": 7, "feature_dim": 4},
    # quartic in the inputs: at input scale 30, C = 7, D = 4 the true gradient in the features,
    # (2/C) f sum_c W_c^2 ~ (2/7) * 30 * 7 * 30^2 = 54000 per entry, reaches float16's 65504
    half_input_scale=10.0,
)
class RationaleInvarianceLoss(LossModule, function=rationale_invariance_loss,
                              check=_check_rationale | hparams(num_classes=Int(ge=1),
                                                               feature_dim=Int(ge=1),
                                                               momentum=Real(gt=0, le=1))):
    """Module form of :func:`rationale_invariance_loss` with RIDG's running reference.

    Keeps ``reference`` (``[C, C, D]``; float32 in a half-precision module) and ``seen``
    (``[C]``) buffers: in training mode each call first updates the reference of every class
    in the batch, to the batch's mean rationale the first time the class is seen and then by
    :math:`\\bar R_k \\leftarrow (1 - m)\\, \\bar R_k + m\\, \\bar R_k^{batch}` (the official
    update, ``momentum`` :math:`m` weighting the new batch; default 0.001 from RIDG's
    ``hparams_registry``), and then computes the loss against the updated reference. In eval
    mode the reference is used as it is (classes never seen use the batch's means).
    """

    function_only = ("reference",)
    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("feature_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("momentum", inspect.Parameter.KEYWORD_ONLY, default=0.001,
                          annotation="float"),
    )
    config: dict[str, Any]
    reference: Tensor
    seen: Tensor

    def configure(self, *, num_classes: int, feature_dim: int, momentum: float = 0.001) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, feature_dim=feature_dim, momentum=momentum)
        self.config = {"num_classes": int(num_classes), "feature_dim": int(feature_dim),
                       "momentum": float(momentum)}
        self.register_buffer("reference", torch.zeros(num_classes, num_classes, feature_dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))

    def forward(self, hidden: Tensor, weight: Tensor, target: Tensor, *,
                bias: Tensor | None = None) -> Tensor:
        """Update the running reference (training mode), then the loss against it."""
        c, d = self.config["num_classes"], self.config["feature_dim"]
        if tuple(weight.shape) != (c, d):
            raise ValueError(f"weight must be [num_classes, feature_dim] = [{c}, {d}] (this "
                             f"module's reference), got {tuple(weight.shape)}")
        kw = self.call_kwargs()
        if self.reference.dtype in (torch.float16, torch.bfloat16):  # statistics stay float32
            self.reference = self.reference.float()
        with torch.no_grad():
            batch, present = class_mean_rationales(hidden.detach(), weight.detach(), target,
                                                   ignore_index=kw.get("ignore_index", -100))
            batch = batch.to(self.reference.dtype)
            ref = self.reference
            if self.training:
                m = self.config["momentum"]
                first = (present & ~self.seen).view(-1, 1, 1)
                again = (present & self.seen).view(-1, 1, 1)
                # torch.where, not boolean indexing: static shapes (no graph break)
                ref.copy_(torch.where(first, batch,
                                      torch.where(again, (1.0 - m) * ref + m * batch, ref)))
                self.seen |= present
                reference = ref
            else:
                reference = torch.where(self.seen.view(-1, 1, 1), ref, batch)
        return type(self).function(hidden, weight, target, bias=bias,
                                   reference=reference.clone(), **kw)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())
