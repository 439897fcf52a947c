"""Functional forms of every registered loss, named ``<registry name>_loss``."""

from losslab.losses.fewshot import icnn_loss, proto_triplet_loss, protonet_loss

__all__ = [
    "icnn_loss",
    "proto_triplet_loss",
    "protonet_loss",
]
