"""The example of docs/architecture.md ("how to add a loss") runs and computes the focal loss."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch

import losslab
from losslab import registry

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"


def test_architecture_example_registers_a_working_loss() -> None:
    blocks = re.findall(r"```python\n(# src/losslab/.*?)```", DOC.read_text(encoding="utf-8"),
                        re.S)
    assert blocks, "docs/architecture.md has no complete example"
    code = blocks[0].replace('"focal"', '"doc_focal"')
    code = code.replace("def focal_loss", "def doc_focal_loss")
    code = code.replace("function=focal_loss", "function=doc_focal_loss").replace(
        ":func:`focal_loss`", ":func:`doc_focal_loss`")
    ns: dict[str, object] = {"__name__": "losslab.losses.classification"}
    try:
        exec(compile(code, str(DOC), "exec"), ns)
        m = losslab.create("doc_focal", gamma=2.0)
        x = torch.randn(5, 3, dtype=torch.float64)
        t = torch.tensor([0, 1, 2, 1, 0])
        logp = x.log_softmax(1).gather(1, t[:, None]).squeeze(1)
        ref = (-(1 - logp.exp()) ** 2 * logp).mean()
        torch.testing.assert_close(m(x, t), ref)
        torch.testing.assert_close(m(x, t), losslab.functional.focal_loss(x, t, gamma=2.0))
        assert "gamma" in str(inspect.signature(type(m)))
    finally:
        registry._REGISTRY.pop("doc_focal", None)
