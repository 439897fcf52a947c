"""Training procedures from the literature: optimizer wrappers, head wrappers, loss-derivative
ensembles and data-selection scores over per-sample losses (wrappers, not registered losses).

* :mod:`losslab.train.sam` -- :class:`SAM` around any optimizer (ASAM, AdaSAP rules);
* :mod:`losslab.train.ortho_grad` -- :class:`OrthoGrad` (⊥Grad, the grokking paper);
* :mod:`losslab.train.saf` -- :class:`SAFLoss` and :class:`MESA` (trajectory KL);
* :mod:`losslab.train.dropout` -- :class:`MultiSampleDropout` / :class:`MultiSampleLoss`;
* :mod:`losslab.train.ensloss` -- :class:`EnsLoss` (random calibrated loss-derivatives);
* :mod:`losslab.train.selection` -- CoLoR-Filter, SeTa and USEFUL selections;
* :mod:`losslab.train.mean_teacher` -- the robust mean teacher's source-prototype alignment;
* :mod:`losslab.train.compress` -- nested dropout on the features and Co-teaching's small-loss
  exchange (compressing features against noisy labels);
* :mod:`losslab.train.block_local` -- :class:`BlockLocal` (Scalable Forward-Forward's block-local
  training, no gradient across blocks);
* :mod:`losslab.train.sensitivity` -- clustering-based sensitivity sampling of a weighted subset;
* :mod:`losslab.train.unlearning` -- the Gradient Collision loss of disposable transfer learning;
* :mod:`losslab.train.pareto_da` -- ParetoDA's TCM loss and target-guided EPO loss weighting.

Each works in a plain loop and with the lab's ``fit`` (``step=`` / ``on_epoch_start=`` hooks).
"""

from losslab.train.block_local import BlockLocal
from losslab.train.compress import (
    NestedDropout,
    coteaching_forget_rate,
    coteaching_loss,
    coteaching_select,
    nested_dropout,
    nested_dropout_probs,
)
from losslab.train.dropout import MultiSampleDropout, MultiSampleLoss, multi_sample_dropout_loss
from losslab.train.ensloss import EnsLoss, ensloss_loss, sample_calibrated_derivatives
from losslab.train.mean_teacher import (
    class_prototypes,
    nearest_prototype,
    prototype_alignment_loss,
)
from losslab.train.ortho_grad import OrthoGrad, orthogonal_gradient
from losslab.train.pareto_da import (
    pareto_da_combine,
    pareto_da_weights,
    refined_target_logits,
    tcm_loss,
)
from losslab.train.saf import MESA, SAFLoss, trajectory_kl
from losslab.train.sam import (
    SAM,
    AdaSAPPerturbation,
    PerturbationRule,
    asam_perturbation,
    frozen_bn_stats,
    sam_perturbation,
)
from losslab.train.selection import (
    color_filter_scores,
    color_filter_select,
    kmeans,
    seta_select,
    slow_learnable,
    useful_upsample,
)
from losslab.train.sensitivity import (
    cluster_representatives,
    sensitivity_probabilities,
    sensitivity_sample,
)
from losslab.train.unlearning import gradient_collision_loss, minibatch_gradients

__all__ = [
    "MESA",
    "SAM",
    "AdaSAPPerturbation",
    "BlockLocal",
    "EnsLoss",
    "MultiSampleDropout",
    "MultiSampleLoss",
    "NestedDropout",
    "OrthoGrad",
    "PerturbationRule",
    "SAFLoss",
    "asam_perturbation",
    "class_prototypes",
    "cluster_representatives",
    "color_filter_scores",
    "color_filter_select",
    "coteaching_forget_rate",
    "coteaching_loss",
    "coteaching_select",
    "ensloss_loss",
    "frozen_bn_stats",
    "gradient_collision_loss",
    "kmeans",
    "minibatch_gradients",
    "multi_sample_dropout_loss",
    "nearest_prototype",
    "nested_dropout",
    "nested_dropout_probs",
    "orthogonal_gradient",
    "pareto_da_combine",
    "pareto_da_weights",
    "prototype_alignment_loss",
    "refined_target_logits",
    "sam_perturbation",
    "sample_calibrated_derivatives",
    "sensitivity_probabilities",
    "sensitivity_sample",
    "seta_select",
    "slow_learnable",
    "tcm_loss",
    "trajectory_kl",
    "useful_upsample",
]
