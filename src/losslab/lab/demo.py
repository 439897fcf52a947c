"""``make demo`` / ``python -m losslab.lab.demo``: the default loss comparison on the glyphs set.

Runs the shipped ``demo`` config (``losslab/lab/configs/demo.toml``): ProtoNet, Proto-Triplet
and ProtoNet + ICNN, 20-way 1-shot and 150-way 5-shot test episodes on the unseen test scripts,
5 seeds, on the embedded glyphs dataset, into ``runs/demo``; then prints the table (each
setting's rows sorted by the paired difference to ProtoNet), the path of the plot and one
plain-language conclusion line generated from the numbers
(:func:`losslab.lab.summary.conclusion`). Offline, CPU-friendly, resumable (re-run to continue
after an interruption). Extra arguments are passed to ``losslab bench fewshot`` and override
the config, e.g. ``python -m losslab.lab.demo --seeds 3 --out runs/demo3``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from losslab.lab.cli import main as lab_main

    args = list(sys.argv[1:] if argv is None else argv)
    if "--out" not in args:
        args += ["--out", "runs/demo"]
    return lab_main(["bench", "fewshot", "--config", "demo", *args])


if __name__ == "__main__":
    raise SystemExit(main())
