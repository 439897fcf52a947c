"""Weighted combinations of registered losses of one kind."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from losslab.registry import create

__all__ = ["CombinedLoss", "combine", "term_keys"]

Term = str | nn.Module


def _term_name(term: nn.Module) -> str:
    s = getattr(term, "spec", None)
    return s.name if s is not None else type(term).__name__


def _needs_index(term: nn.Module) -> bool:
    return bool(getattr(getattr(term, "spec", None), "needs_index", False))


def term_keys(names: Sequence[str]) -> list[str]:
    """The keys of :attr:`CombinedLoss.last_terms`: a term's name, or ``name#i`` (``i``: its
    position, from 0) when an earlier term has that key already.

    >>> term_keys(["protonet", "icnn", "protonet"])
    ['protonet', 'icnn', 'protonet#2']
    """
    keys: list[str] = []
    for i, name in enumerate(names):
        keys.append(name if name not in keys else f"{name}#{i}")
    return keys


class CombinedLoss(nn.Module):
    """``sum_i w_i * loss_i(*args, **kwargs)`` over losses of one kind.

    Every term must return a scalar (a reduced loss). ``index=`` (the dataset ids of the batch's
    samples) goes only to the terms whose ``spec.needs_index`` is true (losses with per-sample
    state, e.g. ``aldr_kl``); the other terms are called without it. Every other argument goes
    to every term.

    After each call, :attr:`last_terms` maps each term to its value in that call (a detached
    float), for logging; the keys are :attr:`keys` (the term names, ``name#i`` for a repeated
    name, see :func:`term_keys`).
    """

    def __init__(self, terms: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(terms) == 0:
            raise ValueError("combine needs at least one loss")
        if len(terms) != len(weights):
            raise ValueError(f"got {len(terms)} losses but {len(weights)} weights")
        kinds = {getattr(getattr(t, "spec", None), "kind", None) for t in terms}
        if len(kinds) > 1:
            raise ValueError(
                "combined losses must share one kind (call signature), got "
                + ", ".join(f"{_term_name(t)}: {t.spec.kind}" for t in terms)  # type: ignore[union-attr]
            )
        for w in weights:
            if not isinstance(w, (int, float)) or not torch.isfinite(torch.tensor(float(w))):
                raise ValueError(f"weights must be finite numbers, got {w!r}")
        self.terms = nn.ModuleList(terms)
        self.weights = [float(w) for w in weights]
        self.names = [_term_name(t) for t in terms]
        self.keys = term_keys(self.names)
        self.kind = kinds.pop()
        self.last_terms: dict[str, float] = {}

    def forward(self, *args: Any, index: Tensor | None = None, **kwargs: Any) -> Tensor:
        total: Tensor | None = None
        values: dict[str, float] = {}
        for key, w, term in zip(self.keys, self.weights, self.terms):
            if index is not None and _needs_index(term):
                value = term(*args, index=index, **kwargs)
            else:
                value = term(*args, **kwargs)
            if value.ndim != 0:
                raise ValueError(
                    f"combined loss term {key!r} returned shape {tuple(value.shape)}; every "
                    "term must return a scalar (use reduction='mean' or 'sum')"
                )
            values[key] = float(value.detach())
            total = w * value if total is None else total + w * value
        self.last_terms = values
        assert total is not None
        return total

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{n}" for w, n in zip(self.weights, self.names))


def combine(
    terms: Sequence[Term] | Mapping[str, float],
    *,
    weights: Sequence[float] | None = None,
    **hparams: Mapping[str, Any],
) -> CombinedLoss:
    """Combine registered losses of one kind into one loss.

    * ``combine(["protonet", "proto_triplet", "icnn"])``: the mean of the terms (weights
      ``1/n``), as the SuSana Distancia paper combines its losses.
    * ``combine({"protonet": 1.0, "proto_triplet": 0.5})``: a weighted sum.
    * Terms may be built modules: ``combine([create("icnn", variant="support"), "protonet"])``.
    * Hyperparameters of named terms: ``combine(["protonet", "icnn"], icnn={"k": 3})``.
    """
    if isinstance(terms, Mapping):
        if weights is not None:
            raise ValueError("pass weights either as the mapping's values or as weights=")
        names: list[Term] = list(terms.keys())
        ws = [float(v) for v in terms.values()]
    else:
        names = list(terms)
        ws = list(weights) if weights is not None else [1.0 / max(1, len(names))] * len(names)
    unused = set(hparams) - {t for t in names if isinstance(t, str)}
    if unused:
        raise ValueError(f"hyperparameters given for losses not in the combination: {unused}")
    modules = [
        create(t, **dict(hparams.get(t, {}))) if isinstance(t, str) else t for t in names
    ]
    for t in modules:
        if not isinstance(t, nn.Module):
            raise ValueError(f"terms must be loss names or nn.Modules, got {type(t).__name__}")
    return CombinedLoss(modules, ws)
