"""The loss registry: one :class:`LossSpec` per loss, filled in by :func:`register`.

Every loss in losslab is a pair (functional form, ``nn.Module`` shell) living in its family
module. The module class is decorated with :func:`register`, which records where the loss comes
from (paper, arXiv id), how it is called (its *kind*) and its defaults. ``create``, ``available``
and ``spec`` read the registry; the contract test suite runs over it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

import torch

__all__ = [
    "DEGENERATE_CASES",
    "FAMILIES",
    "KINDS",
    "LossSpec",
    "available",
    "create",
    "register",
    "spec",
]

#: The call signature of each kind (see DESIGN.md). The contract suite builds inputs per kind.
KINDS: Mapping[str, str] = MappingProxyType(
    {
        "logits": "(logits[N,C,...], target[N,...] int or probs[N,C,...])",
        "embeddings": "(embeddings[N,D], labels[N], *, ref_embeddings=None, ref_labels=None, "
        "indices=None)",
        "episode": "(support[Ns,D], support_labels[Ns], query[Nq,D], query_labels[Nq])",
        "paired": "(a[N,D], b[N,D])",
        "scores": "(scores[Q,L], relevance[Q,L], *, mask=None)",
        "dense": "(logits[N,C,*spatial], target)",
        "teacher": "(student_logits, teacher_logits, *, target=None)",
        "bags": "(pred[N,...], bag_index[N], bag_target[B,...])",
        "linear": "(hidden[N,d], weight[V,d], target[N], *, bias=None)",
    }
)

#: Families follow the seed catalog (catalog.tsv, column ``family``).
FAMILIES: tuple[str, ...] = (
    "classification",
    "robust-noisy",
    "calibration",
    "metric-learning",
    "few-shot",
    "contrastive-ssl",
    "ranking-recsys",
    "segmentation",
    "distillation",
    "aggregate-labels",
    "regression",
    "sequence-lm",
)

#: Degenerate batches a loss may declare (see ``LossSpec.degenerate``).
DEGENERATE_CASES: tuple[str, ...] = ("one_class", "no_positives", "all_ignored")

Kind = Literal[
    "logits", "embeddings", "episode", "paired", "scores", "dense", "teacher", "bags", "linear"
]


@dataclass(frozen=True)
class LossSpec:
    """What the library knows about one loss.

    Attributes:
        name: snake_case registry name (``create(name)``); the functional twin is
            ``losslab.functional.<name>_loss``.
        family: one of :data:`FAMILIES`.
        kind: the call signature, one of :data:`KINDS`.
        paper: title of the paper that defines the loss.
        arxiv: arXiv id of that paper ("" when it has none).
        peers: other libraries with the same definition, as ``"package.Symbol"`` strings.
        defaults: keyword-only hyperparameters of the module and their defaults (read from
            the module's ``__init__``).
        summary: the formula in one line, for ``losslab info``.
        function: the functional form.
        module: the ``nn.Module`` shell.
        reduction: what ``reduction="none"`` returns, e.g. ``"per query"``; ``None`` when the
            loss is defined on a whole set and takes no ``reduction``.
        needs_index: the loss keeps per-sample state and takes ``index=`` (dataset ids).
        example_hparams: hyperparameters needed to build a small instance (e.g. the number of
            classes of a proxy loss); used by ``losslab info`` and the contract suite.
        degenerate: the degenerate batches the loss defines as a zero loss with zero gradient,
            checked by the contract suite: ``"one_class"`` (every label equal),
            ``"no_positives"`` (every label distinct), ``"all_ignored"`` (every target equal
            to ``ignore_index``).
    """

    name: str
    family: str
    kind: str
    paper: str
    arxiv: str
    peers: tuple[str, ...]
    defaults: Mapping[str, Any]
    summary: str
    function: Callable[..., torch.Tensor] = field(repr=False, compare=False)
    module: type[torch.nn.Module] = field(repr=False, compare=False)
    reduction: str | None = "per sample"
    needs_index: bool = False
    example_hparams: Mapping[str, Any] = field(default_factory=dict)
    degenerate: tuple[str, ...] = ()

    @property
    def function_name(self) -> str:
        """Name of the functional twin in ``losslab.functional``."""
        return f"{self.name}_loss"


_REGISTRY: dict[str, LossSpec] = {}

M = TypeVar("M", bound=type[torch.nn.Module])


def _keyword_defaults(module: type[torch.nn.Module]) -> dict[str, Any]:
    """Keyword-only parameters of ``module.__init__`` and their defaults (``...``: required)."""
    out: dict[str, Any] = {}
    for p in inspect.signature(module.__init__).parameters.values():
        if p.name == "self":
            continue
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(
                f"{module.__name__}.__init__: hyperparameter {p.name!r} must be keyword-only"
            )
        out[p.name] = ... if p.default is inspect.Parameter.empty else p.default
    return out


def register(
    name: str,
    *,
    family: str,
    kind: Kind,
    paper: str,
    arxiv: str,
    function: Callable[..., torch.Tensor],
    summary: str,
    peers: tuple[str, ...] = (),
    reduction: str | None = "per sample",
    needs_index: bool = False,
    example_hparams: Mapping[str, Any] | None = None,
    degenerate: tuple[str, ...] = (),
) -> Callable[[M], M]:
    """Class decorator that registers an ``nn.Module`` loss under ``name``."""
    if not name.isidentifier() or name != name.lower():
        raise ValueError(f"loss name must be a snake_case identifier, got {name!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    bad = set(degenerate) - set(DEGENERATE_CASES)
    if bad:
        raise ValueError(f"degenerate cases must be among {DEGENERATE_CASES}, got {sorted(bad)}")
    if function.__name__ != f"{name}_loss":
        raise ValueError(f"the functional twin of {name!r} must be named {name}_loss")

    def decorate(module: M) -> M:
        if name in _REGISTRY and _REGISTRY[name].module is not module:
            raise ValueError(f"loss {name!r} is already registered")
        s = LossSpec(
            name=name,
            family=family,
            kind=kind,
            paper=paper,
            arxiv=arxiv,
            peers=tuple(peers),
            defaults=MappingProxyType(_keyword_defaults(module)),
            summary=summary,
            function=function,
            module=module,
            reduction=reduction,
            needs_index=needs_index,
            example_hparams=MappingProxyType(dict(example_hparams or {})),
            degenerate=tuple(degenerate),
        )
        _REGISTRY[name] = s
        module.spec = s  # type: ignore[attr-defined]
        return module

    return decorate


def _ensure_loaded() -> None:
    # Importing the family modules fills the registry.
    import losslab.losses  # noqa: F401


def spec(name: str) -> LossSpec:
    """The :class:`LossSpec` of a registered loss."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown loss {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        ) from None


def available(family: str | None = None, *, kind: str | None = None) -> list[str]:
    """Sorted names of the registered losses, optionally of one family and/or kind."""
    _ensure_loaded()
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return sorted(
        n
        for n, s in _REGISTRY.items()
        if (family is None or s.family == family) and (kind is None or s.kind == kind)
    )


def create(name: str, **hparams: Any) -> torch.nn.Module:
    """Build the ``nn.Module`` of a registered loss with keyword hyperparameters."""
    s = spec(name)
    unknown = sorted(set(hparams) - set(s.defaults))
    if unknown:
        raise ValueError(
            f"{name}: unknown hyperparameter(s) {unknown}; accepted: {sorted(s.defaults)}"
        )
    missing = sorted(k for k, v in s.defaults.items() if v is ... and k not in hparams)
    if missing:
        raise ValueError(f"{name}: missing required hyperparameter(s) {missing}")
    return s.module(**hparams)
