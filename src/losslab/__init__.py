"""losslab: loss functions from the deep-learning literature, verified, behind one API.

>>> import losslab
>>> loss = losslab.create("proto_triplet", margin=0.5)
>>> losslab.spec("proto_triplet").arxiv
'2305.09062'
"""

from losslab import distances, functional, metrics
from losslab.combine import CombinedLoss, combine
from losslab.losses.aggregate import BagLevelLoss, InstanceLevelLoss, InterpolatedAggregateLoss
from losslab.losses.contrastive import (
    AlignmentLoss,
    ClipLoss,
    InfoNCELoss,
    SigLipLoss,
    UniformityLoss,
)
from losslab.losses.fewshot import ICNNLoss, ProtoNetLoss, ProtoTripletLoss
from losslab.registry import LossSpec, available, create, spec

__version__ = "0.1.0"

__all__ = [
    "AlignmentLoss",
    "BagLevelLoss",
    "ClipLoss",
    "CombinedLoss",
    "ICNNLoss",
    "InfoNCELoss",
    "InstanceLevelLoss",
    "InterpolatedAggregateLoss",
    "LossSpec",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "SigLipLoss",
    "UniformityLoss",
    "__version__",
    "available",
    "combine",
    "create",
    "distances",
    "functional",
    "metrics",
    "spec",
]
