r"""Sparse concept bottleneck models: the contrastive Gumbel-Softmax loss of the concept
bottleneck layer (family ``classification``, kind ``logits``).

Semenov, Ivanov, Beznosikov, Gasnikov, "Sparse Concept Bottleneck Models: Gumbel Tricks in
Contrastive Learning" (arXiv 2404.03323). A concept bottleneck model on a CLIP-like encoder
maps the image-to-concept similarities to concept activations :math:`c = \mathrm{CBL}(s)`
(``[N, K]``: ``N`` images, ``K`` concepts) and classifies with a linear head on them
(``W [C, K]``). The concept bottleneck layer is trained with the contrastive Gumbel-Softmax
loss (Sparse-CBM), the head with cross-entropy.

* :func:`gumbel_concept_loss`: the contrastive Gumbel-Softmax loss of the concept activations
  alone (a batch-level term).
* :func:`sparse_cbm_loss` (registered ``sparse_cbm``): the whole Sparse-CBM objective, the
  head's cross-entropy plus the Gumbel term, with the head as the module's parameter.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
)
from losslab._hparams import Int, Real, hparams
from losslab._ops.draws import rand_like
from losslab.registry import register

__all__ = ["SparseCBMLoss", "gumbel_concept_loss", "sparse_cbm_loss"]

SPARSE_CBM = "Sparse Concept Bottleneck Models: Gumbel Tricks in Contrastive Learning"


def _gumbel_log_softmax(x: Tensor, dim: int, temperature: float) -> Tensor:
    """``log(gumbel_softmax(x, tau, dim))`` in log space (a fresh noise draw, no gradient)."""
    # the same draws eager and compiled (losslab._ops.draws: inductor's own stream otherwise)
    u = rand_like(x).clamp(torch.finfo(x.dtype).tiny, 1.0)
    g = -torch.log(-torch.log(u))
    return torch.log_softmax((x + g) / temperature, dim=dim)


def _gumbel_terms(concepts: Tensor, temperature: float) -> Tensor:
    """``[N]``: the per-image share of the loss (their mean is the loss)."""
    over_batch = -_gumbel_log_softmax(concepts, 0, temperature)  # softmax over images
    over_concepts = -_gumbel_log_softmax(concepts, 1, temperature)  # softmax over concepts
    return 0.5 * (over_batch.mean(1) + over_concepts.mean(1))


_check_gumbel = hparams(temperature=Real(gt=0))


def gumbel_concept_loss(concept_logits: Tensor, *, temperature: float = 1.0) -> Tensor:
    r"""Contrastive Gumbel-Softmax loss of the concept activations ``[N, K]``, as released.

    With fresh Gumbel noise :math:`g, g' \sim \mathrm{Gumbel}(0, 1)^{N \times K}` and
    :math:`\sigma_d` the softmax along dimension :math:`d` (0: over the images of the batch,
    1: over the concepts):

    .. math::
        \mathcal{L}_G = \frac12 \Big[ \frac{1}{NK} \sum_{i,j}
            -\log \sigma_0\big((c + g)/\tau\big)_{ij}
            + \frac{1}{NK} \sum_{i,j} -\log \sigma_1\big((c + g')/\tau\big)_{ij} \Big]

    This is the official code (``Andron00e/SparseCBM``, ``bottlenecks/cbm.py``:
    ``criterion_gumbel`` = the mean of ``gumbel_contrastive_loss`` along dims 0 and 1, each
    ``-log(F.gumbel_softmax(logits, tau, dim)).mean()``), computed here in log space (the same
    value without the ``log`` of a rounded probability). Where it departs from the contrastive
    loss it is modelled on: the CLIP-style loss of the same file (``criterion_contrastive``)
    takes the diagonal of the log-softmax (each row's positive), whereas the Gumbel version
    averages ``-log`` over **all** :math:`N K` entries. Per row that is
    :math:`\mathrm{lse}_j - \mathrm{mean}_j` of the perturbed scores, a cross-entropy against
    the uniform distribution: it has no positives and, noise aside, is smallest when the
    activations are equal along each row and column. We could not read the paper's own
    equation here (only its abstract and the code were available), so this follows the code;
    the code's ``hard=True`` option is left out (its one-hot samples make ``-log 0`` infinite).

    Random: the noise comes from torch's global generator (seed it for repeatable values).

    Args:
        concept_logits: ``[N, K]`` concept bottleneck layer outputs.
        temperature: :math:`\tau > 0` of the Gumbel-Softmax (default 1, the code's).

    Returns: a scalar (a batch-level loss).

    Paper: Semenov et al., arXiv 2404.03323.
    """
    _check_gumbel(temperature=temperature)
    check_matrix("concept_logits", concept_logits)
    c = concept_logits.to(compute_dtype(concept_logits.dtype))
    return _gumbel_terms(c, temperature).mean()


_check_sparse_cbm = hparams(temperature=Real(gt=0), gumbel_weight=Real(ge=0))


def sparse_cbm_loss(
    concept_logits: Tensor,
    target: Tensor,
    head: Tensor,
    *,
    temperature: float = 1.0,
    gumbel_weight: float = 1.0,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""Sparse-CBM objective: the head's cross-entropy on the concept activations plus the
    contrastive Gumbel-Softmax loss of the activations (:func:`gumbel_concept_loss`).

    .. math::
        \mathcal{L} = \frac1N \sum_i \mathrm{CE}\big(W c_i, y_i\big)
                      + \lambda\, \mathcal{L}_G(c)

    The official trainer (``trainer_utils.BottleneckTrainer``, ``training_method="gumbel"``)
    back-propagates ``criterion_gumbel(cbl_logits)`` and ``CrossEntropyLoss(head(cbl_logits),
    y)`` into the same step of the concept layer, the head receiving the CE only: the gradient
    of this sum with :math:`\lambda = 1` (``gumbel_weight``). The head is a bias-free linear
    layer, as in the code. The Gumbel term couples the batch (a softmax over its images); its
    per-image shares (``reduction="none"``) average to :math:`\mathcal{L}_G`.

    Random: the Gumbel noise comes from torch's global generator.

    Args:
        concept_logits: ``[N, K]`` concept activations. target: ``[N]`` class ids in
            ``[0, C)``. head: ``[C, K]`` head weight (the module's parameter).
        temperature: Gumbel-Softmax :math:`\tau > 0` (default 1).
        gumbel_weight: :math:`\lambda \ge 0` (default 1, the code's unweighted sum).
        reduction: ``"mean"`` (above), ``"sum"`` or ``"none"`` (``[N]``:
            :math:`\mathrm{CE}_i + \lambda \times` image ``i``'s share of :math:`\mathcal{L}_G`).

    Paper: Semenov, Ivanov, Beznosikov, Gasnikov, "Sparse Concept Bottleneck Models: Gumbel
    Tricks in Contrastive Learning", arXiv 2404.03323 (formula from the official code; see
    :func:`gumbel_concept_loss` for where it departs from a contrastive loss).
    """
    _check_sparse_cbm(temperature=temperature, gumbel_weight=gumbel_weight)
    check_matrix("concept_logits", concept_logits)
    check_matrix("head", head, dim=concept_logits.shape[1])
    if target.ndim == 2 and target.is_floating_point():
        raise ValueError("sparse_cbm takes class ids as target, not probabilities")
    target = check_labels("target", target, concept_logits.shape[0], of="concept_logits")
    check_same_device(concept_logits=concept_logits, target=target, head=head)
    n_cls = head.shape[0]
    require((target >= 0) & (target < n_cls), lambda: (
        f"target must hold class ids in [0, {n_cls}) (rows of head), got values in "
        f"[{int(target.min())}, {int(target.max())}]"))
    dt = compute_dtype(concept_logits.dtype)
    c, w = concept_logits.to(dt), head.to(dt)
    ce = F.cross_entropy(c @ w.T, target, reduction="none")
    return reduce(ce + gumbel_weight * _gumbel_terms(c, temperature), reduction)


@register(
    "sparse_cbm",
    family="classification",
    kind="logits",
    paper=SPARSE_CBM,
    arxiv="2404.03323",
    summary="CE(W c, y) + 1/2 [mean -log gumbel_softmax(c, dim=0) + mean -log "
    "gumbel_softmax(c, dim=1)] on concept activations c [N, K]; head W owned by the module",
    reduction="per sample",
    example_hparams={"num_classes": 4, "num_concepts": 4},
)
class SparseCBMLoss(LossModule, function=sparse_cbm_loss,
                    check=_check_sparse_cbm | hparams(num_classes=Int(ge=1),
                                                      num_concepts=Int(ge=1))):
    """Module form of :func:`sparse_cbm_loss`: owns the bias-free head ``head [num_classes,
    num_concepts]`` (``nn.Linear``'s default initialisation)."""

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("num_concepts", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
    )
    config: dict[str, Any]
    head: nn.Parameter

    def configure(self, *, num_classes: int, num_concepts: int) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, num_concepts=num_concepts)
        self.config = {"num_classes": int(num_classes), "num_concepts": int(num_concepts)}
        self.head = nn.Parameter(nn.Linear(int(num_concepts), int(num_classes),
                                           bias=False).weight.detach().clone())

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The objective with this module's head (``logits``: the concept activations)."""
        return type(self).function(logits, target, self.head, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())
