"""losslab: loss functions from the deep-learning literature, verified, behind one API.

>>> import losslab
>>> loss = losslab.create("proto_triplet", margin=0.5)
>>> losslab.spec("proto_triplet").arxiv
'2305.09062'
"""

from losslab import distances, functional, metrics, miners
from losslab.combine import CombinedLoss, combine
from losslab.losses.fewshot import ICNNLoss, ProtoNetLoss, ProtoTripletLoss
from losslab.losses.metric import (
    CircleLoss,
    ContrastiveLoss,
    LiftedStructureLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    SupConLoss,
    TripletLoss,
    TripletRatioLoss,
)
from losslab.losses.mixup import Metrix
from losslab.losses.proxy import (
    ArcFaceLoss,
    CosFaceLoss,
    MadaCosLoss,
    NormalizedSoftmaxLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
)
from losslab.losses.regularizers import TCMLoss
from losslab.registry import LossSpec, available, create, spec

__version__ = "0.1.0"

__all__ = [
    "ArcFaceLoss",
    "CircleLoss",
    "CombinedLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "ICNNLoss",
    "LiftedStructureLoss",
    "LossSpec",
    "MadaCosLoss",
    "Metrix",
    "MultiSimilarityLoss",
    "NPairsLoss",
    "NormalizedSoftmaxLoss",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SupConLoss",
    "TCMLoss",
    "TripletLoss",
    "TripletRatioLoss",
    "__version__",
    "available",
    "combine",
    "create",
    "distances",
    "functional",
    "metrics",
    "miners",
    "spec",
]
