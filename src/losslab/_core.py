"""Shared helpers: the one reduction helper, input validation and the module shell.

Every loss calls :func:`reduce` for its ``reduction`` argument and the ``check_*`` helpers for
its inputs, so that the same mistake gives the same clear ``ValueError`` everywhere.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from losslab._require import require

__all__ = [
    "HALF_DTYPES",
    "PROB_ATOL",
    "REDUCTIONS",
    "LossModule",
    "Reduction",
    "check_choice",
    "check_float",
    "check_labels",
    "check_matrix",
    "check_positive",
    "check_probabilities",
    "check_reduction",
    "check_same_device",
    "compute_dtype",
    "keyword_parameters",
    "reduce",
    "zero_loss",
]

Reduction = Literal["mean", "sum", "none"]
REDUCTIONS: tuple[str, ...] = ("mean", "sum", "none")


def check_reduction(reduction: str) -> None:
    """Raise a ``ValueError`` unless ``reduction`` is ``"mean"``, ``"sum"`` or ``"none"``."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def reduce(
    values: Tensor,
    reduction: str,
    *,
    weights: Tensor | None = None,
    count: Tensor | float | None = None,
) -> Tensor:
    """Reduce per-item loss values.

    Args:
        values: per-item losses (any shape).
        reduction: ``"mean"`` (sum / count), ``"sum"`` or ``"none"`` (``values`` unchanged,
            weighted if ``weights`` is given).
        weights: optional per-item weights, multiplied in before reducing.
        count: the denominator of ``"mean"``. Default: the sum of ``weights`` if given, else the
            number of items. A zero denominator gives a zero loss that stays connected to the
            graph (zero gradient), never NaN.
    """
    check_reduction(reduction)
    if weights is not None:
        values = values * weights
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    if count is None:
        count = weights.sum() if weights is not None else float(values.numel())
    if isinstance(count, Tensor):
        # mean over an empty / fully masked set is 0 (with zero gradient), not 0/0.
        safe = torch.where(count > 0, count, torch.ones_like(count))
        return torch.where(count > 0, total / safe, total * 0.0)
    if count <= 0:
        return total * 0.0
    return total / count


#: Half-precision dtypes: losses compute them in float32 (:func:`compute_dtype`).
HALF_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype losses compute in: float32 for half inputs (fp16/bf16), else ``dtype``.

    Losses upcast half-precision inputs, compute in float32 and return float32 (as autocast
    and the fused kernels do), so that small epsilons and exponentials neither underflow nor
    overflow and the value is not rounded back to 3 significant digits.
    """
    return torch.float32 if dtype in HALF_DTYPES else dtype


def zero_loss(*tensors: Tensor) -> Tensor:
    """A scalar zero connected to the graph of ``tensors`` (zero gradient, never NaN)."""
    out: Tensor | None = None
    for t in tensors:
        if isinstance(t, Tensor) and t.is_floating_point():
            z = (t * 0.0).sum()
            out = z if out is None else out + z
    if out is None:
        raise ValueError("zero_loss needs at least one floating-point tensor")
    return out


def check_float(name: str, x: Any) -> None:
    """Raise unless ``x`` is a floating-point tensor."""
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_matrix(name: str, x: Any, *, dim: int | None = None, min_rows: int = 1) -> None:
    """Raise unless ``x`` is a float matrix ``[n, dim]`` with at least ``min_rows`` rows."""
    check_float(name, x)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [N, D], got {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(
            f"{name} must have {dim} columns (the embedding dimension), got {x.shape[1]}"
        )
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} row(s), got {x.shape[0]}")


def check_labels(name: str, labels: Any, n: int, *, of: str) -> Tensor:
    """Validate an integer label vector of length ``n`` (one per row of ``of``) and return it
    as int64.

    Any integer dtype is accepted (int32, uint8, ... are converted); bool and floating-point
    labels are a ``ValueError`` (a bool tensor is a mask, not labels).
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor of labels, got a bool tensor "
                         f"(a mask?); convert with .long() if it holds class ids")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(
            f"{name} must have shape [{n}] (one label per row of {of}), got {tuple(labels.shape)}"
        )
    return labels.long()


#: Tolerance of probability targets: entries >= -PROB_ATOL and rows summing to 1 +- PROB_ATOL
#: (or +- the dtype's epsilon, for bfloat16 targets).
PROB_ATOL = 1e-3


def check_probabilities(name: str, probs: Tensor, *, dim: int = 1,
                        atol: float = PROB_ATOL) -> None:
    """Raise a ``ValueError`` unless ``probs`` holds distributions along ``dim``: finite,
    non-negative and summing to 1, within ``atol`` (the default :data:`PROB_ATOL` admits
    float16/bfloat16 targets). Every loss that takes soft targets calls it (one cheap pass;
    there is no switch to skip it)."""
    if probs.numel() == 0:
        return
    p = probs.detach()
    if torch.compiler.is_compiling():  # the same checks, traced (see require)
        tol = max(atol, float(torch.finfo(p.dtype).eps))
        sums = p.sum(dim, dtype=torch.float64)
        require(torch.isfinite(p) & (p >= -atol), f"{name} (probabilities) must be finite "
                "and >= 0")
        require((sums - 1).abs() <= tol, f"{name} (probabilities) must sum to 1 over dim {dim}")
        return
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} (probabilities) must be finite, got NaN or inf entries")
    lo = float(p.min())
    if lo < -atol:
        raise ValueError(f"{name} (probabilities) must be >= 0, got an entry {lo:.4g}")
    sums = p.sum(dim, dtype=torch.float64)
    worst = float((sums - 1).abs().max())
    tol = max(atol, float(torch.finfo(p.dtype).eps))  # bf16 targets round at 2^-7
    if worst > tol:
        raise ValueError(
            f"{name} (probabilities) must sum to 1 over dim {dim} (tolerance {tol:g}), got a "
            f"row summing to {float(sums.flatten()[(sums - 1).abs().flatten().argmax()]):.6g}"
        )


def check_same_device(**tensors: Tensor) -> None:
    """Raise unless all tensors live on one device."""
    devices = {k: t.device for k, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(f"inputs must be on one device, got {devices}")


def check_positive(name: str, value: float, *, strict: bool = True) -> None:
    """Raise unless ``value`` > 0 (or >= 0 with ``strict=False``)."""
    ok = value > 0 if strict else value >= 0
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0, got {value!r}")


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


class LossModule(nn.Module):
    """Thin ``nn.Module`` shell around a functional loss, generated from the function.

    A stateless loss declares only its function::

        class ProtoNetLoss(LossModule, function=protonet_loss, check=_check_protonet):
            "Module form of :func:`protonet_loss`."

    ``__init__`` (and ``__signature__``, so ``inspect.signature``, ``help()`` and
    ``losslab info`` show the real parameters) is built from the function's keyword-only
    parameters by :meth:`generate_init` (called by ``@register``, which knows the kind's
    call-time keywords). Construction validates ``reduction`` and, when ``check`` is given, calls
    ``check(**hparams)`` -- the same validator the function calls, so the rules live in one
    place. ``forward`` comes from the per-kind call adapter of :mod:`losslab.registry`
    (installed by ``@register`` unless the class defines one).

    Per-class tensor hyperparameters named in ``tensor_hparams`` (class weights, priors) are
    kept as buffers, so they follow ``.to(device)`` and are saved by ``state_dict()``.

    Losses with learnable parameters or state either declare their module-only options in
    ``module_options`` (keyword-only ``inspect.Parameter``s, added to the generated
    ``__init__``) and build the state in :meth:`configure`, which receives them after the
    hyperparameters are validated (the proxy losses); or write an explicit keyword-only
    ``__init__`` that calls ``super().__init__(**hparams)`` with the function's
    hyperparameters. Either way the module-only options are kept apart in ``self.config``.
    """

    spec: ClassVar[Any]  # the LossSpec, set by ``registry.register``
    function: ClassVar[Callable[..., Any]]  # the functional twin
    check: ClassVar[Callable[..., None] | None] = None
    tensor_hparams: ClassVar[tuple[str, ...]] = ()
    #: keyword-only parameters of the function that the module supplies itself (its state,
    #: e.g. ALDR-KL's ``lambdas``; a random generator): not hyperparameters.
    function_only: ClassVar[tuple[str, ...]] = ()
    #: module-only options of the generated ``__init__`` (e.g. ``num_classes``), passed to
    #: :meth:`configure`, never to the function.
    module_options: ClassVar[tuple[inspect.Parameter, ...]] = ()
    _call_keywords: ClassVar[frozenset[str]] = frozenset()  # set by ``register``

    def __init_subclass__(
        cls,
        *,
        function: Callable[..., Any] | None = None,
        check: Callable[..., None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if function is not None:
            cls.function = staticmethod(function)  # type: ignore[assignment]
        if check is not None:
            cls.check = staticmethod(check)  # type: ignore[assignment]

    @classmethod
    def hparam_parameters(
        cls, call_keywords: frozenset[str] = frozenset()
    ) -> list[inspect.Parameter]:
        """The function's keyword-only parameters that are hyperparameters (not call-time
        keywords such as ``mask=`` or ``ref_embeddings=``)."""
        skip = call_keywords | set(cls.function_only)
        return [p for p in keyword_parameters(cls.function) if p.name not in skip]

    @classmethod
    def generate_init(cls, call_keywords: frozenset[str] = frozenset()) -> None:
        """Build ``__init__`` and its ``__signature__`` from the function (unless the class
        writes its own ``__init__``). Called by ``registry.register``, which knows the kind
        and hence which keyword-only parameters are call-time inputs."""
        if "__init__" in cls.__dict__ or "function" not in cls.__dict__:
            return
        options = tuple(p.name for p in cls.module_options)
        sig = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
             *cls.module_options, *cls.hparam_parameters(call_keywords)],
            return_annotation=None,
        )

        def __init__(self: LossModule, **hparams: Any) -> None:
            bound = sig.bind(self, **hparams)
            bound.apply_defaults()
            values = dict(bound.arguments)
            values.pop("self")
            config = {k: values.pop(k) for k in options}
            LossModule.__init__(self, **values)
            if options:
                self.configure(**config)

        __init__.__signature__ = sig  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        __init__.__module__ = cls.__module__
        __init__.__doc__ = f"Hyperparameters of :func:`{cls.function.__name__}`."
        cls.__init__ = __init__  # type: ignore[method-assign]

    def __init__(self, **hparams: Any) -> None:
        super().__init__()
        if "reduction" in hparams:
            check_reduction(hparams["reduction"])
        tensors = {k: hparams[k] for k in self.tensor_hparams if k in hparams}
        plain = {k: v for k, v in hparams.items() if k not in tensors}
        check = type(self).check
        if check is not None:
            check(**_accepted_by(check, hparams))
        self.hparams: dict[str, Any] = plain
        self._tensor_names = tuple(tensors)
        for k, v in tensors.items():
            if v is None:
                setattr(self, k, None)
            else:
                t = torch.as_tensor(v, dtype=torch.float32)
                if t.ndim != 1 or t.numel() == 0:
                    raise ValueError(f"{k} must be a non-empty 1-d sequence, got {tuple(t.shape)}")
                self.register_buffer(k, t.clone())

    def configure(self, **options: Any) -> None:
        """Build parameters or state from the ``module_options`` (called by the generated
        ``__init__`` after the hyperparameters are validated); keeps them in ``self.config``."""
        self.config = dict(options)

    def call_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of the functional twin: hyperparameters and tensor buffers."""
        return {**self.hparams, **{k: getattr(self, k) for k in self._tensor_names}}

    def extra_repr(self) -> str:
        config = getattr(self, "config", {})
        return ", ".join(f"{k}={v!r}" for k, v in {**self.hparams, **config}.items())


def _accepted_by(fn: Callable[..., Any], values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` that ``fn`` accepts as keywords (all, if it takes ``**``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return values
    return {k: v for k, v in values.items() if k in params}


def keyword_parameters(function: Callable[..., Any]) -> list[inspect.Parameter]:
    """The keyword-only parameters of ``function`` (its hyperparameters), in order."""
    return [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
