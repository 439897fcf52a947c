"""Tests of the scripts in ``examples/`` (each ``test_<name>.py`` tests ``examples/<name>.py``).

The scripts are not a package (``examples`` is a common top-level name; another distribution
installs a namespace package of that name), so :func:`load_example` imports one by its path,
with ``examples/`` on ``sys.path`` as when a script runs (the scripts share ``_tiny_lm.py``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    """The module of ``examples/<name>.py``, imported once as ``losslab_examples.<name>``."""
    key = f"losslab_examples.{name}"
    if key in sys.modules:
        return sys.modules[key]
    if str(EXAMPLES) not in sys.path:
        sys.path.append(str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(key, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module
