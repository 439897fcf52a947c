"""Knowledge-distillation losses (registry family ``distillation``).

Kind ``teacher``: ``loss(student_logits[N, C], teacher_logits[N, C], *, target=None)``; row
``i`` of both is the same input. The teacher is normally fixed: pass ``teacher_logits``
computed under ``torch.no_grad()`` (or detached). The losses do not detach it, so the gradient
with respect to the teacher is the derivative of the value (gradcheck-exact).
``reduction="mean"`` averages over the ``N`` rows (the sum over classes is kept, i.e. torch's
``kl_div(reduction="batchmean")``). fp16/bf16 inputs are computed in float32 and the loss is
returned in float32 (:func:`losslab._core.compute_dtype`). Classes masked with ``-inf`` logits
contribute 0 (``0 log 0 = 0``).

Modules: :mod:`~.classic` (Hinton KD, Dual-Head KD's BinaryKL, DistilBERT's cosine
alignment and its triple loss), :mod:`~.divergences` (DKD, generalised JSD),
:mod:`~.transport` (Sinkhorn KD), :mod:`~.features` (ND loss), :mod:`~.regularizers`
(EQ-Net's weight-distribution regulariser, kind ``weights``), :mod:`~.dual_head`
(DHKD's auxiliary head and objective around BinaryKL; a module, not a registered loss),
:mod:`~.segmentation_kd` (MGD's image-level and region-level distillation terms),
:mod:`~.landmarks` (KD-Loss + assistive losses of two landmark teachers; a function),
:mod:`~.boundary_kd` (BPKD's edge and body terms),
:mod:`~.dataset` (dataset distillation: AST's trajectory matching, kind ``regression``, and
class-mean feature matching, kind ``embeddings``),
:mod:`~.multi_teacher` (MTARD's clean + robust teacher objective with its entropy and loss
balance; a function and a stateful module, not registered).
The fused LM-head forms of KD and JSD are :mod:`losslab.kernels.linear_kd`.
"""

from __future__ import annotations

from losslab.losses.distillation import (
    boundary_kd,
    classic,
    dataset,
    divergences,
    dual_head,
    features,
    landmarks,
    multi_teacher,
    regularizers,
    segmentation_kd,
    transport,
)
from losslab.losses.distillation.boundary_kd import BPKDLoss, bpkd_edge_mask, bpkd_loss
from losslab.losses.distillation.classic import (
    BinaryKLLoss,
    CosineAlignmentLoss,
    KDLoss,
    binary_kl_loss,
    cosine_alignment_loss,
    kd_loss,
)
from losslab.losses.distillation.dataset import (
    FeatureMeanMatchingLoss,
    TrajectoryMatchingLoss,
    feature_mean_matching_loss,
    trajectory_matching_loss,
)
from losslab.losses.distillation.divergences import DKDLoss, JSDLoss, dkd_loss, jsd_loss
from losslab.losses.distillation.dual_head import DualHeadKD
from losslab.losses.distillation.features import NDLoss, nd_loss
from losslab.losses.distillation.landmarks import LandmarkKD, landmark_kd_loss
from losslab.losses.distillation.multi_teacher import MTARDBalance, MTARDTerms, mtard_loss
from losslab.losses.distillation.regularizers import WDRLoss, wdr_loss
from losslab.losses.distillation.segmentation_kd import (
    MGDSemanticLoss,
    mgd_content_loss,
    mgd_semantic_loss,
)
from losslab.losses.distillation.transport import SinkhornKDLoss, sinkhorn_kd_loss

__all__ = [
    "BPKDLoss",
    "BinaryKLLoss",
    "CosineAlignmentLoss",
    "DKDLoss",
    "DualHeadKD",
    "FeatureMeanMatchingLoss",
    "JSDLoss",
    "KDLoss",
    "LandmarkKD",
    "MGDSemanticLoss",
    "MTARDBalance",
    "MTARDTerms",
    "NDLoss",
    "SinkhornKDLoss",
    "TrajectoryMatchingLoss",
    "WDRLoss",
    "binary_kl_loss",
    "boundary_kd",
    "bpkd_edge_mask",
    "bpkd_loss",
    "classic",
    "cosine_alignment_loss",
    "dataset",
    "divergences",
    "dkd_loss",
    "dual_head",
    "feature_mean_matching_loss",
    "features",
    "jsd_loss",
    "kd_loss",
    "landmark_kd_loss",
    "landmarks",
    "mgd_content_loss",
    "mgd_semantic_loss",
    "mtard_loss",
    "multi_teacher",
    "nd_loss",
    "regularizers",
    "segmentation_kd",
    "sinkhorn_kd_loss",
    "trajectory_matching_loss",
    "transport",
    "wdr_loss",
]
