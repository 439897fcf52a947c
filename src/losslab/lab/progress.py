"""Progress display of the lab: what :meth:`~losslab.lab.tasks.base.Task.run_job` and
:func:`~losslab.lab.training.fit` may use (:class:`Progress`), a silent one for tests and
worker processes (:class:`NullProgress`) and the tqdm one of ``losslab bench``
(:class:`TqdmProgress`). Imports nothing from the lab."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["Bar", "NullBar", "NullProgress", "Progress", "TqdmProgress"]


class Bar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def set_postfix(self, **kwargs: Any) -> Any: ...


class Progress(Protocol):
    """Progress bars and log lines (a no-op when ``--quiet``)."""

    def bar(self, total: int, desc: str) -> contextlib.AbstractContextManager[Bar]: ...
    def log(self, message: str) -> None: ...


class NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass


class NullProgress:
    """Progress that shows nothing (tests, ``--quiet``)."""

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Bar]:
        yield NullBar()

    def log(self, message: str) -> None:
        pass


class TqdmProgress:
    """Progress bars with tqdm (imported lazily), on stderr, only when it is a terminal."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()

    @contextlib.contextmanager
    def bar(self, total: int, desc: str) -> Iterator[Bar]:
        if not self.enabled:
            yield NullBar()
            return
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True) as b:
            yield b

    def log(self, message: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm

            tqdm.write(message)
        else:
            print(message, flush=True)
