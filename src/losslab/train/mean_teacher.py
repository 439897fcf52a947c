r"""The robust mean teacher's contrastive alignment of test features to source prototypes.

RMT (test-time adaptation) trains the student on the test stream with two terms: the
symmetric consistency with its EMA teacher (the registered loss
:func:`losslab.losses.robust.mean_teacher_sce_loss`) and a contrastive term that pulls each
test feature, and the feature of its augmented view, towards the nearest **source class
prototype** (the mean source feature of a class, computed once before adaptation). This module
holds the second term and the prototypes it needs; the teacher's EMA update is the usual one
(e.g. :meth:`losslab.train.MESA.update`'s rule with RMT's momentum 0.999).

The contrastive term is the supervised contrastive loss over three views per test sample
``i`` -- its nearest source prototype, its feature, the feature of its augmented view -- with
the sample index as the label (positives: the other two views of the same sample; negatives:
every view of every other sample), all views through the same projector and L2-normalised,
every view an anchor (SupContrast's ``contrast_mode="all"``), temperature 0.1. The nearest
prototype is chosen by cosine similarity of the raw (unprojected) features, without gradient.

Paper: Döbler, Marsden, Yang, "Robust Mean Teacher for Continual and Gradual Test-Time
Adaptation", arXiv 2211.13081; defaults from the authors' configuration
(``CONTRAST.TEMPERATURE = 0.1``, ``CONTRAST.MODE = 'all'``, ``PROJECTION_DIM = 128``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import check_labels
from losslab.losses.metric_learning.weighted import supcon_loss

__all__ = ["class_prototypes", "nearest_prototype", "prototype_alignment_loss"]


def class_prototypes(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean feature of each class: ``[num_classes, D]`` from ``features[N, D]`` and
    ``labels[N]`` in ``[0, num_classes)``. A class with no sample is a ``ValueError`` (its
    prototype would be undefined)."""
    if features.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(features.shape)}")
    labels = check_labels("labels", labels, features.shape[0], of="features")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    counts = torch.bincount(labels, minlength=num_classes)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"every class needs at least one sample; classes {missing} have none")
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    return sums / counts.unsqueeze(1).to(features.dtype)


def nearest_prototype(features: Tensor, prototypes: Tensor) -> Tensor:
    """Index of the prototype with the largest cosine similarity to each feature (``[N]``)."""
    with torch.no_grad():
        sim = F.normalize(features, dim=1) @ F.normalize(prototypes, dim=1).T
        return sim.argmax(dim=1)


def prototype_alignment_loss(
    features: Tensor,
    features_aug: Tensor,
    prototypes: Tensor,
    *,
    temperature: float = 0.1,
    projector: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r"""RMT's contrastive alignment of test features to their nearest source prototypes.

    .. math::
        z_{i,v} = \frac{g(x_{i,v})}{\lVert g(x_{i,v}) \rVert},\quad
        x_{i,1} = \mu_{k(i)},\ x_{i,2} = f_i,\ x_{i,3} = f^{aug}_i,\quad
        k(i) = \arg\max_k \cos(f_i, \mu_k)

    .. math::
        \mathcal L = \frac{1}{3N} \sum_{i,v} -\frac12 \sum_{v' \neq v}
        \log \frac{e^{z_{i,v} \cdot z_{i,v'} / \tau}}
        {\sum_{(j,u) \neq (i,v)} e^{z_{i,v} \cdot z_{j,u} / \tau}}

    Args:
        features: ``[N, D]`` test features :math:`f` (the feature extractor's output).
        features_aug: ``[N, D]`` features of an augmented view of the same images.
        prototypes: ``[K, D]`` source class prototypes :math:`\mu` (:func:`class_prototypes`
            of source features), fixed.
        temperature: :math:`\tau > 0` (default 0.1, RMT's configuration).
        projector: :math:`g`, applied to every view (RMT: Linear-ReLU-Linear to 128
            dimensions, trained with the model); ``None`` for the identity.

    Returns the scalar loss (mean over the :math:`3N` anchors), through
    :func:`losslab.losses.metric_learning.weighted.supcon_loss` with the sample index as the label.
    """
    if features.ndim != 2 or features_aug.shape != features.shape:
        raise ValueError("features and features_aug must both be [N, D] of one shape, got "
                         f"{tuple(features.shape)} and {tuple(features_aug.shape)}")
    if prototypes.ndim != 2 or prototypes.shape[1] != features.shape[1]:
        raise ValueError(f"prototypes must be [K, D] with D = {features.shape[1]}, got "
                         f"{tuple(prototypes.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = features.shape[0]
    views = torch.cat([prototypes[nearest_prototype(features, prototypes)], features,
                       features_aug])
    if projector is not None:
        views = projector(views)
    labels = torch.arange(n, device=features.device).repeat(3)
    return supcon_loss(views, labels, temperature=temperature, metric="cosine")
