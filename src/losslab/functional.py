"""Functional forms of every registered loss, named ``<registry name>_loss``."""

from losslab.losses.aggregate import (
    bag_level_loss,
    instance_level_loss,
    interpolated_aggregate_loss,
)
from losslab.losses.contrastive import (
    alignment_loss,
    clip_loss,
    infonce_loss,
    siglip_loss,
    uniformity_loss,
)
from losslab.losses.fewshot import icnn_loss, proto_triplet_loss, protonet_loss

__all__ = [
    "alignment_loss",
    "bag_level_loss",
    "clip_loss",
    "icnn_loss",
    "infonce_loss",
    "instance_level_loss",
    "interpolated_aggregate_loss",
    "proto_triplet_loss",
    "protonet_loss",
    "siglip_loss",
    "uniformity_loss",
]
