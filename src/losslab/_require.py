"""The one data check that survives ``torch.compile``: :func:`require`.

A leaf module (it imports only torch), so that :mod:`losslab._hparams` and
:mod:`losslab._core` can both use it without an import cycle; :mod:`losslab._core`
re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["require"]


def require(ok: Tensor, message: str | Callable[[], str]) -> None:
    """Raise ``ValueError(message)`` unless every entry of the bool tensor ``ok`` holds: the
    data checks of the losses (label ranges, finite relevance, ...). ``message`` may be a
    function, called only on failure (to list the offending values).

    Under ``torch.compile`` the check is traced as an asynchronous assert
    (``torch._assert_async``, no graph break): a failing batch raises a ``RuntimeError`` when
    the graph runs instead of the eager ``ValueError`` (the message, if a function, is
    replaced by a static one).
    """
    if torch.compiler.is_compiling():
        text = message if isinstance(message, str) else (
            "losslab: invalid input values (run eagerly for the details)")
        torch._assert_async(ok.all(), text)  # pyright: ignore[reportPrivateImportUsage]
        return
    if not bool(ok.all()):
        raise ValueError(message if isinstance(message, str) else message())
