"""Functional forms of every registered loss, named ``<registry name>_loss``."""

from losslab.fused.linear_cross_entropy import linear_cross_entropy_loss
from losslab.losses.fewshot import icnn_loss, proto_triplet_loss, protonet_loss

__all__ = [
    "icnn_loss",
    "linear_cross_entropy_loss",
    "proto_triplet_loss",
    "protonet_loss",
]
