r"""Data-selection scores that are functions of per-sample losses (or outputs): CoLoR-Filter's
conditional loss reduction, SeTa's loss-clustered sliding window and USEFUL's one-shot
upsampling of slow-learnable examples. Each returns indices into the dataset; feeding them to a
sampler is the caller's (e.g. a task's ``batches(epoch)``).

* **CoLoR-Filter** (Brandfonbrener et al., "CoLoR-Filter: Conditional Loss Reduction Filtering
  for Targeted Language Model Pre-training", arXiv 2406.10670): with a *prior* model (trained on
  prior data) and a *conditional* model (the prior one fine-tuned on a small downstream set),
  select the candidates :math:`x` that minimise
  :math:`-\log p(x \mid \theta_{cond}) + \log p(x \mid \theta_{prior})`, i.e. with the largest
  conditional loss reduction :math:`\ell_{prior}(x) - \ell_{cond}(x)` (:func:`color_filter_scores`,
  :func:`color_filter_select`: the top ``k``; the paper keeps ``n`` of ``tau * n`` candidates).
* **SeTa** (Zhou, Gao, Wang, "Scale Efficient Training for Large Datasets", arXiv 2503.13385;
  the selection as in the official ``mrazhou/SeTa``): each epoch, (1) random pruning to a
  ``keep_ratio`` of the samples, (2) k-means of their last recorded losses into ``num_groups``
  clusters ordered easy (low loss) to hard, (3) a sliding window of
  ``round(num_groups * window_scale)`` consecutive clusters whose start moves one cluster per
  epoch, ``start = epoch mod (num_groups - window + 1)``: an easy-to-hard curriculum that drops
  both the easiest and the hardest clusters. Epoch 0 keeps every cluster (:func:`seta_select`).
  The official code's final "annealing" epochs (random ``keep_ratio`` subsets) are
  ``seta_select(..., num_groups=1)``.
* **USEFUL** (Nguyen et al., "Changing the Training Data Distribution to Reduce Simplicity Bias
  Improves In-distribution Generalization", arXiv 2404.17768): after a few early epochs
  (5-10 % of training), cluster the examples of every class into 2 groups by the network's
  output, and upsample once the cluster with the higher average loss (the slow-learnable
  examples); then retrain from scratch on the new distribution (:func:`useful_upsample`,
  ``factor=2`` duplicates them).

The k-means is a deterministic Lloyd iteration (:func:`kmeans`), so the selections depend only
on their inputs (and ``generator`` for SeTa's random pruning).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "color_filter_scores",
    "color_filter_select",
    "kmeans",
    "seta_select",
    "slow_learnable",
    "useful_upsample",
]


def _check_losses(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 1 or not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a 1-d floating tensor of per-sample losses, got "
                         f"{getattr(x, 'shape', type(x))}")


def color_filter_scores(prior_loss: Tensor, conditional_loss: Tensor) -> Tensor:
    r"""CoLoR-Filter's score :math:`\ell_{prior}(x) - \ell_{cond}(x)` (per-sample negative
    log-likelihoods under the prior and the conditional model, ``[N]``): higher = more useful
    for the downstream distribution."""
    _check_losses("prior_loss", prior_loss)
    _check_losses("conditional_loss", conditional_loss)
    if prior_loss.shape != conditional_loss.shape:
        raise ValueError(f"prior_loss and conditional_loss must have the same shape, got "
                         f"{tuple(prior_loss.shape)} and {tuple(conditional_loss.shape)}")
    return prior_loss.detach() - conditional_loss.detach()


def color_filter_select(prior_loss: Tensor, conditional_loss: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` candidates with the largest CoLoR score (ties: lower index first).
    The paper selects ``n`` of ``tau * n`` candidates: pass the pool and ``k = n``."""
    scores = color_filter_scores(prior_loss, conditional_loss)
    n = scores.shape[0]
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}], got {k}")
    return torch.argsort(-scores, stable=True)[:k]


def kmeans(points: Tensor, k: int, *, iters: int = 100) -> tuple[Tensor, Tensor]:
    """Deterministic k-means (Lloyd) of ``points`` ``[N, D]`` (or ``[N]``): returns
    ``(labels [N], centres [k, D])``. Initialisation: farthest-point traversal from the point
    nearest the mean; an empty cluster keeps its centre."""
    x = points.detach().to(torch.float64)
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"points must be [N] or [N, D], got shape {tuple(points.shape)}")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (the number of points), got {k}")
    first = int(torch.argmin(((x - x.mean(0)) ** 2).sum(1)))
    idx = [first]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        nxt = int(torch.argmax(d2))
        idx.append(nxt)
        d2 = torch.minimum(d2, ((x - x[nxt]) ** 2).sum(1))
    centres = x[idx].clone()
    labels = torch.zeros(n, dtype=torch.long)
    for it in range(iters):
        new = torch.cdist(x, centres).argmin(1)
        if it > 0 and torch.equal(new, labels):
            break
        labels = new
        for j in range(k):
            m = labels == j
            if bool(m.any()):
                centres[j] = x[m].mean(0)
    return labels, centres


def seta_select(losses: Tensor, *, epoch: int, keep_ratio: float = 1.0, num_groups: int = 10,
                window_scale: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """SeTa's selection for ``epoch`` (0-based) from the last recorded per-sample ``losses``
    ``[N]`` (module docstring). Returns the selected dataset indices (in random-pruning order).
    """
    _check_losses("losses", losses)
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    if not 0 < window_scale <= 1:
        raise ValueError(f"window_scale must be in (0, 1], got {window_scale}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    n = losses.shape[0]
    kept = torch.randperm(n, generator=generator)[: int(n * keep_ratio)]
    if num_groups < 1 or num_groups > max(1, kept.shape[0]):
        raise ValueError(f"num_groups must be in [1, {kept.shape[0]}], got {num_groups}")
    if num_groups == 1 or epoch == 0 or kept.shape[0] == 0:
        return kept
    vals = losses.detach()[kept]
    labels, centres = kmeans(vals, num_groups)
    rank = torch.empty(num_groups, dtype=torch.long)
    rank[torch.argsort(centres[:, 0], stable=True)] = torch.arange(num_groups)
    group = rank[labels]  # 0 = easiest cluster
    window = max(1, round(num_groups * window_scale))
    start = epoch % (num_groups - window + 1)
    chosen = (group >= start) & (group < start + window)
    sel = kept[chosen]
    return sel if sel.numel() else kept[:1]


def useful_upsample(outputs: Tensor, labels: Tensor, losses: Tensor, *, factor: int = 2
                    ) -> Tensor:
    """USEFUL's new training distribution: every index once, plus ``factor - 1`` more copies of
    each example in the higher-loss cluster of its class (2-means of the early ``outputs``
    ``[N, C]`` within each class; ``losses`` ``[N]`` the per-sample losses at that time). A
    class with fewer than 2 examples, or whose clusters tie in mean loss, is not upsampled."""
    _check_losses("losses", losses)
    n = losses.shape[0]
    if outputs.dim() != 2 or outputs.shape[0] != n:
        raise ValueError(f"outputs must be [N, C] with N = {n}, got {tuple(outputs.shape)}")
    if labels.shape != (n,) or torch.is_floating_point(labels):
        raise ValueError(f"labels must be an integer tensor of shape ({n},)")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    slow = slow_learnable(outputs, labels, losses)
    extra = torch.nonzero(slow).flatten().repeat(factor - 1)
    return torch.cat([torch.arange(n), extra])


def slow_learnable(outputs: Tensor, labels: Tensor, losses: Tensor) -> Tensor:
    """The boolean mask ``[N]`` of USEFUL's slow-learnable examples (see
    :func:`useful_upsample`)."""
    mask = torch.zeros(losses.shape[0], dtype=torch.bool)
    out, lo = outputs.detach().to(torch.float64), losses.detach().to(torch.float64)
    for c in torch.unique(labels).tolist():
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < 2:
            continue
        lab, _ = kmeans(out[members], 2)
        means = [lo[members[lab == j]].mean() if bool((lab == j).any()) else None
                 for j in range(2)]
        if means[0] is None or means[1] is None or bool(means[0] == means[1]):
            continue
        hard = 0 if bool(means[0] > means[1]) else 1
        mask[members[lab == hard]] = True
    return mask
