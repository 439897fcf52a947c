"""``docs/catalog_coverage.md`` is generated from the seed catalog and the source tree and must
stay current (``python scripts/catalog_coverage.py`` rewrites it)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "catalog_coverage.py"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="needs the repository checkout")


def _load():  # a script module, loaded by path
    spec = importlib.util.spec_from_file_location("catalog_coverage", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["catalog_coverage"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_coverage_document_is_current() -> None:
    assert _load().main(["--check"]) == 0, "run: python scripts/catalog_coverage.py"


def test_citation_rules() -> None:
    cc = _load()
    paper = cc.Paper("A Long Enough Title About Some Loss", "classification", "3", "yes",
                     ("2101.00001",), "a loss")
    docs = [("losslab.a.f", "Paper: X, arXiv 2101.00001."),
            ("losslab.b.g", 'Paper: "A long enough title about some loss".'),
            ("losslab.c.h", "arXiv 2101.00002, another paper.")]
    assert cc.cited_by(paper, docs) == ["losslab.a.f", "losslab.b.g"]
    assert cc.status(paper, [], {}) == "open"
    assert cc.status(paper, ["losslab.a.f"], {}) == "covered"
    assert cc.status(paper, [], {paper.title: "a survey"}) == "no loss to add"
    out = cc.Paper("Some Dataset Paper With A Title", "other", "-", "no", (), "a dataset")
    assert cc.status(out, [], {}) == "out of scope"


def test_every_decision_names_a_catalog_paper() -> None:
    cc = _load()
    titles = {p.title for p in cc.read_catalog()}
    assert set(cc.read_decisions()) <= titles
