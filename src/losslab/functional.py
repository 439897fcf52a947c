"""Functional forms of every registered loss, named ``<registry name>_loss``."""

from losslab.losses.aggregate import (
    bag_level_loss,
    instance_level_loss,
    interpolated_aggregate_loss,
)
from losslab.losses.anyloss import (
    anyloss_loss,
)
from losslab.losses.classification import (
    comp_sum_loss,
    crammer_singer_loss,
    cross_entropy_loss,
    focal_loss,
    gce_loss,
    ldam_loss,
    logit_adjusted_loss,
    logz_penalty_loss,
    mae_loss,
    poly1_loss,
    stablemax_ce_loss,
    weston_watkins_loss,
    z_loss_loss,
)
from losslab.losses.contrastive import (
    alignment_loss,
    clip_loss,
    infonce_loss,
    siglip_loss,
    uniformity_loss,
)
from losslab.losses.fewshot import (
    icnn_loss,
    proto_triplet_loss,
    protonet_loss,
)
from losslab.losses.robust import (
    aldr_kl_loss,
    ldr_kl_loss,
    nce_loss,
    nce_mae_loss,
    nce_rce_loss,
    nfl_loss,
    nfl_rce_loss,
    rce_loss,
    sce_loss,
)

__all__ = [
    "aldr_kl_loss",
    "alignment_loss",
    "anyloss_loss",
    "bag_level_loss",
    "clip_loss",
    "comp_sum_loss",
    "crammer_singer_loss",
    "cross_entropy_loss",
    "focal_loss",
    "gce_loss",
    "icnn_loss",
    "infonce_loss",
    "instance_level_loss",
    "interpolated_aggregate_loss",
    "ldam_loss",
    "ldr_kl_loss",
    "logit_adjusted_loss",
    "logz_penalty_loss",
    "mae_loss",
    "nce_loss",
    "nce_mae_loss",
    "nce_rce_loss",
    "nfl_loss",
    "nfl_rce_loss",
    "poly1_loss",
    "proto_triplet_loss",
    "protonet_loss",
    "rce_loss",
    "sce_loss",
    "siglip_loss",
    "stablemax_ce_loss",
    "uniformity_loss",
    "weston_watkins_loss",
    "z_loss_loss",
]
