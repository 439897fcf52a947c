"""losslab: loss functions from the deep-learning literature, verified, behind one API.

>>> import losslab
>>> loss = losslab.create("proto_triplet", margin=0.5)
>>> losslab.spec("proto_triplet").arxiv
'2305.09062'
"""

from losslab import distances, functional, metrics
from losslab.combine import CombinedLoss, combine
from losslab.losses.aggregate import BagLevelLoss, InstanceLevelLoss, InterpolatedAggregateLoss
from losslab.losses.anyloss import AnyLoss
from losslab.losses.classification import (
    CompSumLoss,
    CrammerSingerLoss,
    CrossEntropyLoss,
    FocalLoss,
    GCELoss,
    LDAMLoss,
    LogitAdjustedLoss,
    LogZPenaltyLoss,
    MAELoss,
    Poly1Loss,
    StableMaxCELoss,
    WestonWatkinsLoss,
    ZLoss,
)
from losslab.losses.contrastive import (
    AlignmentLoss,
    ClipLoss,
    InfoNCELoss,
    SigLipLoss,
    UniformityLoss,
)
from losslab.losses.fewshot import ICNNLoss, ProtoNetLoss, ProtoTripletLoss
from losslab.losses.robust import (
    ALDRKLLoss,
    LDRKLLoss,
    NCELoss,
    NCEMAELoss,
    NCERCELoss,
    NFLLoss,
    NFLRCELoss,
    RCELoss,
    SCELoss,
)
from losslab.registry import LossSpec, available, create, spec

__version__ = "0.1.0"

__all__ = [
    "ALDRKLLoss",
    "AlignmentLoss",
    "AnyLoss",
    "BagLevelLoss",
    "ClipLoss",
    "CombinedLoss",
    "CompSumLoss",
    "CrammerSingerLoss",
    "CrossEntropyLoss",
    "FocalLoss",
    "GCELoss",
    "ICNNLoss",
    "InfoNCELoss",
    "InstanceLevelLoss",
    "InterpolatedAggregateLoss",
    "LDAMLoss",
    "LDRKLLoss",
    "LogZPenaltyLoss",
    "LogitAdjustedLoss",
    "LossSpec",
    "MAELoss",
    "NCELoss",
    "NCEMAELoss",
    "NCERCELoss",
    "NFLLoss",
    "NFLRCELoss",
    "Poly1Loss",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "RCELoss",
    "SCELoss",
    "SigLipLoss",
    "StableMaxCELoss",
    "UniformityLoss",
    "WestonWatkinsLoss",
    "ZLoss",
    "__version__",
    "available",
    "combine",
    "create",
    "distances",
    "functional",
    "metrics",
    "spec",
]
