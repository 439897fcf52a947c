"""Segmentation losses (registry family ``segmentation``, kind ``dense``).

``loss(logits[N, C, *spatial], target)``: ``target`` is integer class ids ``[N, *spatial]``
(``ignore_index`` pixels left out) or soft labels (``[N, C, *spatial]`` distributions); a single
logit channel (``[N, 1, *spatial]``) is a binary sigmoid input with 0/1 ids or foreground
probabilities. 2-D and 3-D. The conventions (aggregation groups, ``classes="all"|"present"``,
reductions, degenerate batches) are in :mod:`~.overlap` and shared by every module:

* :mod:`~.overlap`: Dice, Jaccard, Tversky, Focal Tversky, Jaccard Metric, Dice Semimetric,
  Lovász-Softmax, Lovász hinge;
* :mod:`~.compound`: Dice + CE, Dice + focal (soft-label correct Dice term);
* :mod:`~.topology`: Skeleton Recall, clDice (thin structures);
* :mod:`~.betti`: the Betti matching loss (persistence bars matched through the union);
* :mod:`~.boundary`: the distance-map boundary loss, the Hausdorff-DT loss, BASNet's hybrid
  loss;
* :mod:`~.prior`: label-free losses with a class-proportion prior (prior-aware entropy
  minimisation, RePRI's transductive few-shot loss).
"""

from __future__ import annotations

from losslab.losses.segmentation import betti, boundary, compound, overlap, prior, topology
from losslab.losses.segmentation.betti import *  # noqa: F403
from losslab.losses.segmentation.boundary import *  # noqa: F403
from losslab.losses.segmentation.compound import *  # noqa: F403
from losslab.losses.segmentation.overlap import *  # noqa: F403
from losslab.losses.segmentation.prior import *  # noqa: F403
from losslab.losses.segmentation.topology import *  # noqa: F403

__all__ = ["betti", "boundary", "compound", "overlap", "prior", "topology"]
__all__ += betti.__all__
__all__ += boundary.__all__
__all__ += compound.__all__
__all__ += overlap.__all__
__all__ += prior.__all__
__all__ += topology.__all__
