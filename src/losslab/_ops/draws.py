"""Random draws inside compiled graphs that are the eager draws: the shared machinery of the
custom ops ``losslab::metrix_draws`` and ``losslab::mar_draw``.

Under ``torch.compile``, inductor replaces ``torch.rand*`` on torch's default generator by its
own (Philox) streams, so a traced draw differs from the eager one. A loss that must draw the
same numbers compiled and eager (the same seed, the same training run) makes its draws in a
``torch.library`` custom op, which is opaque to inductor and calls torch's (or numpy's) random
functions eagerly when the graph runs. Two things are needed for that to be right:

* :func:`register_ordered`: the op is marked as having an ordered side effect (AOTAutograd
  threads an effect token through its calls). Without it, a functional op called twice with
  equal inputs in one graph is deduplicated (one draw instead of two: measured, the tests of
  both losses fail without it), and a pass may reorder or recompute it in the backward.
* :func:`generator_key` / :func:`generator_of`: an op cannot take a ``torch.Generator``, so it
  takes an integer key: 0 for torch's default generator, else the ``id`` of the generator,
  registered (weakly held) while dynamo traces the call
  (``torch.compiler.assume_constant_result``: the key is a constant of the graph, registered
  before the graph first runs; dynamo guards on the generator's identity and traces again
  for another one).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

__all__ = ["generator_key", "generator_of", "rand_like", "register_ordered"]

#: The explicit generators of compiled draws, by ``id``; an entry goes with its generator.
_GENERATORS: dict[int, weakref.ReferenceType[torch.Generator]] = {}


def _register(generator: torch.Generator) -> int:
    key = id(generator)
    ref = _GENERATORS.get(key)
    if ref is None or ref() is not generator:
        def forget(r: weakref.ReferenceType[torch.Generator], key: int = key) -> None:
            if _GENERATORS.get(key) is r:
                del _GENERATORS[key]

        _GENERATORS[key] = weakref.ref(generator, forget)
    return key


_register_at_trace = torch.compiler.assume_constant_result(_register)


def generator_key(generator: torch.Generator | None) -> int:
    """The op argument for ``generator``: 0 for torch's default generator (``None``), else a
    key of the generator, registered when dynamo traces the call."""
    if generator is None:
        return 0
    return _register_at_trace(generator)


def generator_of(key: int, op: str) -> torch.Generator | None:
    """The generator of ``key`` (``None``: torch's default one), inside the op ``op``; a
    ``RuntimeError`` if the generator the graph was traced with no longer exists."""
    if key == 0:
        return None
    ref = _GENERATORS.get(key)
    gen = ref() if ref is not None else None
    if gen is None:
        raise RuntimeError(f"{op}: the generator that the compiled loss was traced with no "
                           "longer exists")
    return gen


def register_ordered(op: Any) -> bool:
    """Mark the custom op ``op`` (a ``torch.library.custom_op`` object) as having an ordered
    side effect; ``False`` on a torch without effectful custom ops
    (``CustomOpDef.register_effect``, present in the torch this is tested with), where the
    caller must not put the op in a graph that could hold two of its calls."""
    register = getattr(op, "register_effect", None)
    try:
        from torch._library.effects import EffectType
    except ImportError:  # pragma: no cover - older torch
        return False
    if register is None:  # pragma: no cover - older torch
        return False
    register(EffectType.ORDERED)
    return True


# --------------------------------------------------------------------------------------------
# Uniform noise: torch.rand_like, the same numbers compiled and eager
# --------------------------------------------------------------------------------------------


def _rand_eagerly(x: Tensor, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.rand_like(x)
    return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)


@torch.library.custom_op("losslab::rand_like", mutates_args=())
def _rand_like_op(x: Tensor, generator: int) -> Tensor:
    """``U[0, 1)`` noise of ``x``'s shape, dtype and device (only those are read), drawn
    eagerly from the generator of key ``generator`` (:func:`generator_key`)."""
    return _rand_eagerly(x, generator_of(generator, "losslab::rand_like"))


@_rand_like_op.register_fake
def _(x: Tensor, generator: int) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_RAND_ORDERED = register_ordered(_rand_like_op)
_rand_through_a_break = cast(Callable[[Tensor, "torch.Generator | None"], Tensor],
                             torch.compiler.disable(_rand_eagerly))


def rand_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``torch.rand_like(x)`` (from ``generator``, default torch's global one) that draws the
    same numbers under ``torch.compile`` as eagerly (inductor would otherwise replace the draw
    by its own random stream): the custom op ``losslab::rand_like`` under compile (an ordered
    effect), the plain call eagerly."""
    if not torch.compiler.is_compiling():
        return _rand_eagerly(x, generator)
    if not _RAND_ORDERED:  # pragma: no cover - older torch
        return _rand_through_a_break(x, generator)
    return _rand_like_op(x.detach(), generator_key(generator))
