"""Generative-model losses (family ``generative``): objectives of diffusion, Bayesian-flow and
unnormalised models, and proper losses for generative models observed through samples.

Submodules: :mod:`~.mar` (MAR's per-token Diffusion Loss with its learnable denoising MLP,
kind ``regression``), :mod:`~.bfn` (Bayesian Flow Networks' continuous-time losses for
continuous and discretised data, kind ``regression``, and discrete data, kind ``logits``, all
with the call-time keyword ``time=``; the Bayesian flows and output parameterisations),
:mod:`~.meco` (maximum likelihood of unnormalised models by compositional optimisation, kind
``unnormalized``), :mod:`~.proper` (black-box proper losses of generative models observed
through draws, kind ``logits``).

Half inputs are computed, and returned, in float32 (:func:`losslab._core.compute_dtype`).
"""

from __future__ import annotations

from losslab.losses.generative.bfn import (
    BFNContinuousLoss,
    BFNDiscreteLoss,
    BFNDiscretisedLoss,
    bfn_continuous_flow,
    bfn_continuous_loss,
    bfn_continuous_output,
    bfn_discrete_flow,
    bfn_discrete_loss,
    bfn_discretised_loss,
    bfn_discretised_mean,
    bfn_discretised_output,
    bfn_discretised_probs,
)
from losslab.losses.generative.mar import (
    MARDenoiser,
    MARDiffusionLoss,
    cosine_alpha_bar,
    mar_diffusion_loss,
    timestep_embedding,
)
from losslab.losses.generative.meco import MECOLoss, meco_loss
from losslab.losses.generative.proper import (
    BlackBoxPowerLoss,
    black_box_power_loss,
    elementary_symmetric,
    power_expected_loss,
)

__all__ = [
    "BFNContinuousLoss",
    "BFNDiscreteLoss",
    "BFNDiscretisedLoss",
    "BlackBoxPowerLoss",
    "MARDenoiser",
    "MARDiffusionLoss",
    "MECOLoss",
    "bfn_continuous_flow",
    "bfn_continuous_loss",
    "bfn_continuous_output",
    "bfn_discrete_flow",
    "bfn_discrete_loss",
    "bfn_discretised_loss",
    "bfn_discretised_mean",
    "bfn_discretised_output",
    "bfn_discretised_probs",
    "black_box_power_loss",
    "cosine_alpha_bar",
    "elementary_symmetric",
    "mar_diffusion_loss",
    "meco_loss",
    "power_expected_loss",
    "timestep_embedding",
]
