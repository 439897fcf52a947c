"""losslab: loss functions from the deep-learning literature, verified, behind one API.

>>> import losslab
>>> loss = losslab.create("proto_triplet", margin=0.5)
>>> losslab.spec("proto_triplet").arxiv
'2305.09062'
"""

from losslab import distances, functional, metrics
from losslab.combine import CombinedLoss, combine
from losslab.fused.linear_cross_entropy import LinearCrossEntropyLoss
from losslab.losses.fewshot import ICNNLoss, ProtoNetLoss, ProtoTripletLoss
from losslab.registry import LossSpec, available, create, spec

__version__ = "0.1.0"

__all__ = [
    "CombinedLoss",
    "ICNNLoss",
    "LinearCrossEntropyLoss",
    "LossSpec",
    "ProtoNetLoss",
    "ProtoTripletLoss",
    "__version__",
    "available",
    "combine",
    "create",
    "distances",
    "functional",
    "metrics",
    "spec",
]
