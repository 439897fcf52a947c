"""Functional forms of every registered loss, named ``<registry name>_loss``."""

from losslab.losses.fewshot import icnn_loss, proto_triplet_loss, protonet_loss
from losslab.losses.metric import (
    circle_loss,
    contrastive_loss,
    lifted_structure_loss,
    multi_similarity_loss,
    npairs_loss,
    supcon_loss,
    triplet_loss,
    triplet_ratio_loss,
)
from losslab.losses.mixup import metrix_loss
from losslab.losses.proxy import (
    arcface_loss,
    cosface_loss,
    madacos_loss,
    normalized_softmax_loss,
    proxy_anchor_loss,
    proxy_nca_loss,
)
from losslab.losses.regularizers import tcm_loss

__all__ = [
    "arcface_loss",
    "circle_loss",
    "contrastive_loss",
    "cosface_loss",
    "icnn_loss",
    "lifted_structure_loss",
    "madacos_loss",
    "metrix_loss",
    "multi_similarity_loss",
    "normalized_softmax_loss",
    "npairs_loss",
    "proto_triplet_loss",
    "protonet_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "supcon_loss",
    "tcm_loss",
    "triplet_loss",
    "triplet_ratio_loss",
]
