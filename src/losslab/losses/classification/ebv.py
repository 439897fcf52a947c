r"""Equiangular Basis Vectors (family ``classification``, kind ``embeddings``): fixed,
nearly orthogonal unit class vectors and a softmax over the cosine to them.

EBVs (Shen, Sun, Wei, "Equiangular Basis Vectors", arXiv 2303.11637) replace the trainable
``k``-way classifier by ``C`` fixed unit vectors :math:`w_1, \ldots, w_C \in \mathbb{R}^D`
whose pairwise angles are all close to 90° (:math:`|\cos(w_i, w_j)| \le \alpha`), found once
by :func:`equiangular_basis_vectors`. A sample is trained towards its class vector (the
spherical distance is minimised through a softmax over the cosines, :func:`ebv_loss`) and
predicted as the class of the nearest vector.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Int, Real, hparams
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["EBVLoss", "ebv_loss", "equiangular_basis_vectors"]

_check_generate = hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1),
                          threshold=Real(ge=0, lt=1), lr=Real(gt=0), max_steps=Int(ge=0),
                          seed=Int())


def equiangular_basis_vectors(
    num_classes: int,
    embedding_dim: int,
    *,
    threshold: float = 0.002,
    lr: float = 1e-3,
    max_steps: int = 100_000,
    seed: int = 0,
) -> Tensor:
    r"""``[num_classes, embedding_dim]`` unit vectors with :math:`|\cos(w_i, w_j)| \le` about
    ``threshold`` for every pair :math:`i \ne j` (float32, CPU).

    Gradient descent from random unit vectors on

    .. math::
        \mathcal{L}_{\text{EBV}} = \sum_{i \ne j} \max\big(|\langle w_i, w_j\rangle| - \alpha,
        0\big),

    re-normalising the rows before every step and stopping as soon as the largest
    :math:`|\cos|` is at most :math:`\alpha + 10^{-4}` (the official generator's rule; its
    defaults: :math:`\alpha = 0.002`, SGD with learning rate ``1e-3``, at most 100 000 steps).
    With ``num_classes <= embedding_dim`` an orthonormal set satisfies any threshold; the
    optimisation matters when there are more classes than dimensions (where a small
    :math:`\alpha` may be unreachable: then the last iterate is returned after ``max_steps``).
    Deterministic for a given ``seed``.
    """
    _check_generate(num_classes=num_classes, embedding_dim=embedding_dim, threshold=threshold,
                    lr=lr, max_steps=max_steps, seed=seed)
    g = torch.Generator().manual_seed(seed)
    w = F.normalize(torch.randn(num_classes, embedding_dim, generator=g), dim=1)
    off = ~torch.eye(num_classes, dtype=torch.bool)
    for _ in range(max_steps):
        w = F.normalize(w, dim=1).requires_grad_(True)
        cos = (w @ w.T).abs()
        worst = float(cos.detach()[off].max()) if num_classes > 1 else 0.0
        if worst <= threshold + 1e-4:
            break
        loss = F.relu(cos[off] - threshold).sum()
        (grad,) = torch.autograd.grad(loss, w)
        w = (w - lr * grad).detach()
    return F.normalize(w.detach(), dim=1)


_check_ebv = hparams(temperature=Real(gt=0))


def ebv_loss(
    embeddings: Tensor,
    labels: Tensor,
    basis: Tensor,
    *,
    temperature: float = 0.07,
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""EBV classification loss: cross-entropy over the cosines to the fixed class vectors.

    .. math::
        \ell = -\log \frac{\exp(\cos(f, w_y) / \tau)}{\sum_{k=1}^{C} \exp(\cos(f, w_k)/\tau)}

    where :math:`f` is the sample's embedding (L2-normalised here) and :math:`w_k` the rows of
    ``basis`` (normalised too). Minimising it minimises the spherical distance
    :math:`\arccos \cos(f, w_y)` to the sample's class vector relative to the others;
    prediction is :math:`\arg\max_k \cos(f, w_k)`.

    Args:
        embeddings: ``[N, D]`` features (any norm). labels: ``[N]`` class ids in ``[0, C)``.
        basis: ``[C, D]`` class vectors, normally :func:`equiangular_basis_vectors`; constants
            (a gradient reaching them is not part of the method: the module keeps them in a
            buffer).
        temperature: :math:`\tau` (default 0.07, the official training code's value).
        ref_embeddings, ref_labels, indices: not supported (``ValueError``).
        reduction: ``"mean"`` over samples, ``"sum"``, ``"none"`` (``[N]``).

    Paper: Shen, Sun, Wei, "Equiangular Basis Vectors", arXiv 2303.11637 (CVPR 2023); the
    loss and :math:`\tau` checked against the official training script (the paper's text was
    not readable here), which also uses label smoothing 0.1 on ImageNet (not part of the
    loss; combine with ``label_smoothing`` of ``cross_entropy`` if wanted).
    """
    _check_ebv(temperature=temperature)
    check_matrix("embeddings", embeddings)
    check_matrix("basis", basis, dim=embeddings.shape[1])
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels, basis=basis)
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError("ebv compares samples with fixed class vectors: ref_embeddings, "
                         "ref_labels and indices= are not supported")
    n_cls = basis.shape[0]
    require((labels >= 0) & (labels < n_cls), lambda: (  # no graph break under compile
        f"labels must lie in [0, {n_cls}) (the number of class vectors), got "
        f"values in [{int(labels.min())}, {int(labels.max())}]"))
    dt = compute_dtype(embeddings.dtype)
    f = normalize_rows(embeddings.to(dt))
    w = normalize_rows(basis.to(dt))
    per = F.cross_entropy(f @ w.T / temperature, labels, reduction="none")
    out = reduce(per, reduction)
    if reduction != "none":
        out = out + zero_loss(embeddings, basis)
    return out


@register(
    "ebv",
    family="classification",
    kind="embeddings",
    paper="Equiangular Basis Vectors",
    arxiv="2303.11637",
    summary="CE over cos(f, w_k) / tau to fixed near-orthogonal unit class vectors, tau=0.07",
    example_hparams={"num_classes": 4, "embedding_dim": 5},
)
class EBVLoss(LossModule, function=ebv_loss,
              check=_check_ebv | hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1),
                                         threshold=Real(ge=0, lt=1), seed=Int())):
    """Module form of :func:`ebv_loss`: generates the class vectors once at construction
    (:func:`equiangular_basis_vectors` with ``threshold`` and ``seed``) and keeps them in the
    ``basis`` buffer (saved by ``state_dict``; load the official vectors into it to reuse
    them)."""

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("threshold", inspect.Parameter.KEYWORD_ONLY, default=0.002,
                          annotation="float"),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0, annotation="int"),
    )
    config: dict[str, Any]
    basis: Tensor

    def configure(self, *, num_classes: int, embedding_dim: int, threshold: float = 0.002,
                  seed: int = 0) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, embedding_dim=embedding_dim, threshold=threshold,
                  seed=seed)
        self.config = {"num_classes": int(num_classes), "embedding_dim": int(embedding_dim),
                       "threshold": float(threshold), "seed": int(seed)}
        basis = equiangular_basis_vectors(int(num_classes), int(embedding_dim),
                                          threshold=float(threshold), seed=int(seed))
        self.register_buffer("basis", basis)

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        """The loss with this module's class vectors."""
        return type(self).function(embeddings, labels, self.basis, ref_embeddings=ref_embeddings,
                                   ref_labels=ref_labels, indices=indices, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())

