"""The ``losslab`` command (also ``python -m losslab``): ``list``, ``info`` and, with the lab
extra, ``bench`` and ``report``."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from losslab.registry import FAMILIES, KINDS, LossSpec, available, spec


def catalog_markdown(family: str | None = None) -> str:
    """The catalog of registered losses as a markdown table (the README embeds it)."""
    rows = [
        "| name | family | kind | paper | arXiv |",
        "|---|---|---|---|---|",
    ]
    for name in available(family):
        s = spec(name)
        arxiv = f"[{s.arxiv}](https://arxiv.org/abs/{s.arxiv})" if s.arxiv else ""
        rows.append(f"| `{s.name}` | {s.family} | {s.kind} | {s.paper} | {arxiv} |")
    return "\n".join(rows) + "\n"


_CATALOG = re.compile(r"(<!-- catalog:start -->\n).*?(<!-- catalog:end -->)", re.S)


def readme_with_catalog(text: str) -> str:
    """``text`` (a README) with its catalog section replaced by :func:`catalog_markdown`."""
    if not _CATALOG.search(text):
        raise ValueError("README has no <!-- catalog:start --> ... <!-- catalog:end --> section")
    return _CATALOG.sub(lambda m: m.group(1) + catalog_markdown() + m.group(2), text)


def _plain_table(names: list[str]) -> str:
    rows = [("name", "family", "kind", "arxiv")]
    rows += [(s.name, s.family, s.kind, s.arxiv) for s in map(spec, names)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() + "\n" for r in rows
    )


def info_text(s: LossSpec) -> str:
    """What ``losslab info NAME`` prints."""
    doc = inspect.getdoc(s.function) or ""
    summary = doc.split("\n\n")[0].replace("\n", " ")
    lines = [
        f"{s.name}  ({s.family}, kind {s.kind})",
        f"  {summary}",
        f"  formula:   {s.summary}",
        f"  call:      losslab.create({s.name!r})({KINDS[s.kind].strip('()')})",
        f"  function:  losslab.functional.{s.function_name}",
        f"  paper:     {s.paper}" + (f"  (arXiv {s.arxiv}, https://arxiv.org/abs/{s.arxiv})"
                                     if s.arxiv else ""),
        "  defaults:  " + (", ".join(
            f"{k}={'<required>' if v is ... else repr(v)}" for k, v in s.defaults.items()
        ) or "(none)"),
        "  reduction: " + (f"'none' gives one value {s.reduction}" if s.reduction
                           else "set-level loss: a scalar, no reduction"),
        f"  peers:     {', '.join(s.peers) if s.peers else '(none with the same definition)'}",
    ]
    if s.needs_index:
        lines.append("  state:     per-sample state; call with index= (dataset ids)")
    if s.degenerate:
        lines.append(f"  zero on:   {', '.join(s.degenerate)} batches (zero gradient)")
    if s.example_hparams:
        lines.append(f"  example:   losslab.create({s.name!r}, "
                     + ", ".join(f"{k}={v!r}" for k, v in s.example_hparams.items()) + ")")
    return "\n".join(lines) + "\n"


def _cmd_list(args: argparse.Namespace) -> int:
    if args.update_readme:
        path = Path(args.update_readme)
        path.write_text(readme_with_catalog(path.read_text(encoding="utf-8")), encoding="utf-8")
        return 0
    if args.markdown:
        sys.stdout.write(catalog_markdown(args.family))
    else:
        sys.stdout.write(_plain_table(available(args.family)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    sys.stdout.write(info_text(spec(args.name)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="losslab", description="Loss functions from the literature, verified, and a lab."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the catalog of registered losses")
    p.add_argument("--family", choices=FAMILIES, help="only this family")
    p.add_argument("--markdown", action="store_true", help="a markdown table (for the README)")
    p.add_argument("--update-readme", metavar="PATH",
                   help="rewrite the catalog section of this README in place")
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("info", help="formula, defaults, paper and peers of one loss")
    p.add_argument("name")
    p.set_defaults(func=_cmd_info)
    try:  # the lab needs the [lab] extra only when it runs, not to register its commands
        from losslab.lab.cli import add_bench_parser, add_report_parser
    except ImportError:
        pass
    else:
        add_bench_parser(sub)
        add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:
        parser.exit(2, f"losslab: error: {e}\n")
        return 2  # unreachable; for type checkers
    except KeyboardInterrupt:
        print("losslab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
