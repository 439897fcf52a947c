"""Which seed papers losslab covers, generated from the source tree (``docs/catalog_coverage.md``).

``docs/catalog/seed_papers.tsv`` is the seed catalog in compact form (title, family, priority,
the catalog's ``library_fit`` verdict, arXiv ids, what the paper contributes). A paper counts
as covered when its arXiv id, or its title, appears in the docstring of an object of
``src/losslab`` (every loss, procedure, metric and weighting cites its paper there); the
registered losses among those objects are listed by name. Papers the catalog marks
``library_fit = no`` contribute no loss, regulariser or metric (a dataset, a compression
scheme, a system) and are listed as out of scope with the catalog's own summary. The rest are
open: that list is the to-do list of the long-tail issue.

    python scripts/catalog_coverage.py            # rewrite docs/catalog_coverage.md
    python scripts/catalog_coverage.py --check    # exit 1 when the file is out of date

``tests/contract/test_catalog_coverage.py`` runs the check.
"""

from __future__ import annotations

import argparse
import ast
import csv
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "losslab"
CATALOG = ROOT / "docs" / "catalog" / "seed_papers.tsv"
DECISIONS = ROOT / "docs" / "catalog" / "decisions.tsv"
OUT = ROOT / "docs" / "catalog_coverage.md"
ARXIV = re.compile(r"\d{4}\.\d{4,5}")


@dataclass(frozen=True)
class Paper:
    title: str
    family: str
    priority: str
    library_fit: str
    arxiv: tuple[str, ...]
    contributes: str


def read_catalog(path: Path = CATALOG) -> list[Paper]:
    with path.open(encoding="utf-8", newline="") as f:
        return [
            Paper(r["title"], r["family"], r["priority"], r["library_fit"],
                  tuple(r["arxiv"].split()), r["contributes"])
            for r in csv.DictReader(f, delimiter="\t")
        ]


def read_decisions(path: Path = DECISIONS) -> dict[str, str]:
    """Papers decided by hand to contribute no loss to add: title -> the reason."""
    with path.open(encoding="utf-8", newline="") as f:
        return {r["title"]: r["reason"] for r in csv.DictReader(f, delimiter="\t")}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def docstrings(src: Path = SRC) -> list[tuple[str, str]]:
    """``(dotted object name, docstring)`` for every module, top-level def/class and method."""
    out: list[tuple[str, str]] = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = ".".join(parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        doc = ast.get_docstring(tree)
        if doc:
            out.append((module, doc))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc:
                    out.append((f"{module}.{node.name}", doc))
                if isinstance(node, ast.ClassDef):
                    for sub in node.body:
                        if isinstance(sub, ast.FunctionDef) and (d := ast.get_docstring(sub)):
                            out.append((f"{module}.{node.name}", d))
    return out


def registered_by_object() -> dict[str, str]:
    """Dotted name of each registered loss's function and class -> the registry name."""
    sys.path.insert(0, str(SRC.parent))
    import losslab

    out: dict[str, str] = {}
    for name in losslab.available():
        s = losslab.spec(name)
        for obj in (s.function, s.module):
            out[f"{obj.__module__}.{obj.__qualname__}"] = name
    return out


def cited_by(paper: Paper, docs: list[tuple[str, str]]) -> list[str]:
    """Objects whose docstring cites the paper (an arXiv id, or the title word for word)."""
    title = _norm(paper.title)
    hits = []
    for obj, doc in docs:
        ids = set(ARXIV.findall(doc))
        if ids & set(paper.arxiv) or (len(title) > 20 and title in _norm(doc)):
            hits.append(obj)
    return sorted(set(hits))


def status(paper: Paper, objects: list[str], decisions: dict[str, str]) -> str:
    if objects:
        return "covered"
    if paper.title in decisions:
        return "no loss to add"
    if paper.library_fit == "no":
        return "out of scope"
    return "open"


def render(papers: list[Paper], docs: list[tuple[str, str]], registered: dict[str, str],
           decisions: dict[str, str]) -> str:
    rows = []
    counts: Counter[tuple[str, str]] = Counter()
    by_family: dict[str, Counter[str]] = defaultdict(Counter)
    for p in papers:
        objs = cited_by(p, docs)
        st = status(p, objs, decisions)
        names = sorted({registered[o] for o in objs if o in registered})
        others = sorted({o.removeprefix("losslab.") for o in objs if o not in registered})
        # a module docstring that cites the paper next to its losses: keep the losses only
        if names:
            others = [o for o in others if not any(
                registered_obj.startswith("losslab." + o + ".") for registered_obj in registered
                if registered[registered_obj] in names)]
        where = ", ".join([f"`{n}`" for n in names] + [f"`{o}`" for o in others[:4]])
        if len(others) > 4:
            where += f" (+{len(others) - 4})"
        if st == "out of scope":
            where = f"catalog: {p.contributes[:110]}"
        elif st == "no loss to add":
            where = decisions[p.title]
        counts[(p.priority, st)] += 1
        by_family[p.family][st] += 1
        ids = " ".join(p.arxiv) or "-"
        rows.append((p.priority, p.family, p.title, ids, st, where))
    rows.sort(key=lambda r: ({"1": 0, "2": 1, "3": 2}.get(r[0], 3), r[4] != "open", r[1], r[2]))

    statuses = ("covered", "open", "no loss to add", "out of scope")
    head = "| " + " | ".join(statuses) + " |"
    rule = "|---:" * len(statuses) + "|"
    lines = [
        "# Seed-catalog coverage",
        "",
        "Generated by `python scripts/catalog_coverage.py` from `docs/catalog/seed_papers.tsv`,",
        "`docs/catalog/decisions.tsv` and the docstrings of `src/losslab`. `covered`: an",
        "object cites the paper's arXiv id or title (registered losses by name). `no loss to",
        "add`: decided by hand, with the reason (a survey, a theory result about an existing",
        "loss, a dataset).",
        "`out of scope`: the catalog's `library_fit = no` (no loss, regulariser or metric).",
        "`open`: not implemented yet.",
        "",
        "| priority " + head,
        "|---" + rule,
    ]
    for pr in ("1", "2", "3", "-"):
        lines.append(f"| {pr} | " + " | ".join(str(counts[(pr, st)]) for st in statuses) + " |")
    total: Counter[str] = Counter()
    for (_, st), n in counts.items():
        total[st] += n
    lines.append("| all | " + " | ".join(str(total[st]) for st in statuses) + " |")
    lines += ["", "| family " + head, "|---" + rule]
    for fam in sorted(by_family):
        c = by_family[fam]
        lines.append(f"| {fam} | " + " | ".join(str(c[st]) for st in statuses) + " |")
    lines += ["", "| priority | family | paper | arXiv | status | where |",
              "|---|---|---|---|---|---|"]
    for pr, fam, title, ids, st, where in rows:
        title = title.replace("|", "/")
        lines.append(f"| {pr} | {fam} | {title} | {ids} | {st} | {where.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Rewrite (or --check) docs/catalog_coverage.md.")
    ap.add_argument("--check", action="store_true", help="exit 1 when the file is out of date")
    args = ap.parse_args(argv)
    text = render(read_catalog(), docstrings(), registered_by_object(), read_decisions())
    if args.check:
        if not OUT.exists() or OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python scripts/catalog_coverage.py")
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
