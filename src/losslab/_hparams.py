"""Declared hyperparameter constraints: one mechanism validates every loss's hyperparameters.

A loss declares its hyperparameters' types and ranges once::

    _check_focal = hparams(gamma=Real(ge=0), alpha=Real(ge=0, le=1, optional=True))

``_check_focal(**values)`` raises a ``ValueError`` naming the argument and what was expected
(type, finiteness, range, choices); the functional form calls it, and the module shell calls it
at construction (``class FocalLoss(LossModule, function=focal_loss, check=_check_focal)``). The
contract suite reads the declared rules (``_check_focal.rules``) and tries, for every loss,
values each rule must reject (NaN, a string, out of range) -- so a new loss passes the
bad-hyperparameter matrix by declaring its constraints, not by writing its own tests.

Rules: :class:`Real` (a finite real number; ``bool`` and strings are rejected), :class:`Int`
(an integer, not ``bool``), :class:`Choice` (one of a fixed set), :class:`Flag` (a ``bool``),
:class:`PerClass` (one finite weight per class, or optionally one number) and :class:`Kwargs`
(the keyword hyperparameters of a wrapped loss).
``optional=True`` also admits ``None``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from losslab._require import require  # a leaf module (torch only): no import cycle

__all__ = ["Choice", "Flag", "HParamCheck", "Int", "Kwargs", "PerClass", "Real", "Rule", "hparams"]


class Rule:
    """A constraint on one hyperparameter."""

    optional: bool = False

    def check(self, name: str, value: Any) -> None:
        """Raise a ``ValueError`` naming ``name`` unless ``value`` satisfies the rule."""
        raise NotImplementedError

    def rejects(self) -> Iterator[Any]:
        """Values the rule must reject (the contract suite tries each)."""
        yield "0.5"
        if not self.optional:
            yield None

    def _none_ok(self, name: str, value: Any) -> bool:
        if value is None:
            if self.optional:
                return True
            raise ValueError(f"{name} must not be None; expected {self.expected()}")
        return False

    def expected(self) -> str:
        raise NotImplementedError


def _bounds_text(gt: float | None, ge: float | None, lt: float | None, le: float | None) -> str:
    parts = []
    if gt is not None:
        parts.append(f"> {gt:g}")
    if ge is not None:
        parts.append(f">= {ge:g}")
    if lt is not None:
        parts.append(f"< {lt:g}")
    if le is not None:
        parts.append(f"<= {le:g}")
    return " and ".join(parts)


@dataclass(frozen=True)
class Real(Rule):
    """A finite real number (int or float, not bool) within optional bounds."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    optional: bool = False

    def expected(self) -> str:
        b = _bounds_text(self.gt, self.ge, self.lt, self.le)
        return "a finite real number" + (f" {b}" if b else "") + (" or None" if self.optional
                                                                  else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r} "
                             f"({type(value).__name__})")
        v = float(value)
        # comparisons, not math.isfinite: they also trace for the symbolic floats of
        # torch.compile(dynamic=True) (a guard per bound), and NaN fails both
        if not -math.inf < v < math.inf:
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")
        if ((self.gt is not None and not v > self.gt) or (self.ge is not None and not v >= self.ge)
                or (self.lt is not None and not v < self.lt)
                or (self.le is not None and not v <= self.le)):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")

    def rejects(self) -> Iterator[Any]:
        yield from super().rejects()
        yield float("nan")
        yield float("inf")
        yield True
        for bound, step in ((self.gt, 0.0), (self.ge, -1.0), (self.lt, 0.0), (self.le, 1.0)):
            if bound is not None:
                yield bound + step * max(1.0, abs(bound))


@dataclass(frozen=True)
class Int(Rule):
    """An integer (not bool) within optional bounds."""

    ge: int | None = None
    le: int | None = None
    optional: bool = False

    def expected(self) -> str:
        b = _bounds_text(None, self.ge, None, self.le)
        return "an integer" + (f" {b}" if b else "") + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r} "
                             f"({type(value).__name__})")
        v = int(value)
        if (self.ge is not None and v < self.ge) or (self.le is not None and v > self.le):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")

    def rejects(self) -> Iterator[Any]:
        yield from super().rejects()
        yield 1.5
        yield float("nan")
        if self.ge is not None:
            yield self.ge - 1
        if self.le is not None:
            yield self.le + 1


@dataclass(frozen=True, init=False)
class Choice(Rule):
    """One of a fixed set of values (compared with ``==``; ``True`` is not ``1`` here)."""

    options: tuple[Any, ...]
    optional: bool = False

    def __init__(self, *options: Any, optional: bool = False) -> None:
        object.__setattr__(self, "options", tuple(options))
        object.__setattr__(self, "optional", optional)

    def expected(self) -> str:
        return f"one of {self.options}" + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        ok = any(value == o and type(value) is type(o) for o in self.options)
        if not ok:
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")

    def rejects(self) -> Iterator[Any]:
        if not self.optional:
            yield None
        yield "__not_an_option__"


@dataclass(frozen=True)
class Flag(Rule):
    """A ``bool``."""

    optional: bool = False

    def expected(self) -> str:
        return "True or False" + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}")

    def rejects(self) -> Iterator[Any]:
        yield from super().rejects()
        yield 1


class HParamCheck:
    """A hyperparameter validator built from declared rules (see :func:`hparams`).

    Calling it with keyword values checks those given (others are left alone, so one check can
    serve several losses that share a subset); ``extra`` callables receive the same keywords
    (those they accept) for cross-parameter constraints.
    """

    def __init__(self, rules: Mapping[str, Rule],
                 extra: tuple[Callable[..., None], ...] = ()) -> None:
        self.rules: Mapping[str, Rule] = dict(rules)
        self.extra = extra

    def __call__(self, **values: Any) -> None:
        for k, v in values.items():
            rule = self.rules.get(k)
            if rule is not None:
                rule.check(k, v)
        for fn in self.extra:
            fn(**values)

    def __or__(self, other: HParamCheck) -> HParamCheck:
        """The union of two checks (``other``'s rule wins for a shared name)."""
        return HParamCheck({**self.rules, **other.rules}, self.extra + other.extra)

    def __repr__(self) -> str:
        return f"hparams({', '.join(f'{k}={r!r}' for k, r in self.rules.items())})"


def hparams(*extra: Callable[..., None], **rules: Rule) -> HParamCheck:
    """Declare the hyperparameter rules of a loss; returns the validator (see module doc).

    ``extra`` are callables for constraints between parameters; they receive all the values
    passed to the check as keywords and must accept ``**kwargs``.
    """
    return HParamCheck(rules, tuple(extra))


# --------------------------------------------------------------------------------------------
# Per-class vectors (added for the logits losses: class weights, priors, counts, focal alpha)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PerClass(Rule):
    """A per-class vector: a non-empty 1-d sequence, array or tensor of finite numbers within
    optional bounds (its length is checked against the number of classes when the loss is
    called). With ``scalar``, a single number satisfying that rule is accepted too (e.g.
    focal's ``alpha``: a float or one weight per class).

    The values are read once (one device synchronisation for a tensor on an accelerator).
    """

    gt: float | None = None
    ge: float | None = None
    scalar: Real | None = None
    optional: bool = False

    def expected(self) -> str:
        b = _bounds_text(self.gt, self.ge, None, None)
        text = "a non-empty 1-d sequence of finite numbers" + (f" {b}" if b else "")
        text += " (one per class)"
        if self.scalar is not None:
            text = f"{self.scalar.expected()}, or {text}"
        return text + (" or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if isinstance(value, (str, bytes, bool)):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r} "
                             f"({type(value).__name__})")
        if isinstance(value, numbers.Number):
            if self.scalar is None:
                raise ValueError(f"{name} must be {self.expected()}, got the number {value!r}")
            try:
                self.scalar.check(name, value)
            except ValueError:
                raise ValueError(f"{name} must be {self.expected()}, got {value!r}") from None
            return
        import torch  # the rules above are pure Python; only this one reads tensors

        try:
            t = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"{name} must be {self.expected()}, got {value!r}") from e
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must be {self.expected()}, got dtype {t.dtype}")
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be {self.expected()}, got shape {tuple(t.shape)}")
        t = t.to(torch.float64)
        ok = torch.isfinite(t)
        if self.gt is not None:
            ok = ok & (t > self.gt)
        if self.ge is not None:
            ok = ok & (t >= self.ge)
        # through require: an async assert under torch.compile instead of a graph break
        require(ok, lambda: f"{name} must be {self.expected()}, got an entry "
                            f"{float(t[~ok][0])!r}")

    def rejects(self) -> Iterator[Any]:
        yield from super().rejects()
        yield [float("nan"), 1.0]
        yield [float("inf"), 1.0]
        yield []
        yield [[1.0, 1.0]]
        if self.gt is not None:
            yield [self.gt, 1.0 + abs(self.gt)]
        if self.ge is not None:
            yield [self.ge - max(1.0, abs(self.ge)), 1.0 + abs(self.ge)]
        if self.scalar is None:
            yield 0.5
        else:
            for v in self.scalar.rejects():
                if v is None and self.optional:
                    continue
                if v != "0.5":
                    yield v


# --------------------------------------------------------------------------------------------
# Keyword mappings (added for metrix's base_hparams: the hyperparameters of a wrapped loss)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kwargs(Rule):
    """A mapping of keyword arguments: string keys that are identifiers (e.g. the
    hyperparameters of a wrapped base loss, which that loss's own rules then check)."""

    optional: bool = False

    def expected(self) -> str:
        return "a mapping of keyword arguments (identifier keys)" + (
            " or None" if self.optional else "")

    def check(self, name: str, value: Any) -> None:
        if self._none_ok(name, value):
            return
        if not isinstance(value, Mapping):
            raise ValueError(f"{name} must be {self.expected()}, got {value!r} "
                             f"({type(value).__name__})")
        bad = [k for k in value if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise ValueError(f"{name} must be {self.expected()}, got the key(s) {bad!r}")

    def rejects(self) -> Iterator[Any]:
        yield from super().rejects()
        yield [("margin", 0.1)]
        yield {1: 0.1}
