"""torch.compile readiness of the registered losses (issue #18, target 5).

For each loss (default: every registered loss, or ``--names``), the contract suite's small
float32 inputs of its kind are traced with ``torch._dynamo.explain`` and the graph breaks are
reported with the losslab source line that caused them; ``--time`` also times eager against
``torch.compile`` (best of ``--iters`` forward+backward passes after the compile) on the same
inputs. One process; expect seconds to a minute per loss on a CPU (the compile dominates).

    PYTHONPATH=src python benchmarks/bench_compile.py --names cross_entropy focal triplet
    PYTHONPATH=src python benchmarks/bench_compile.py --out benchmarks/results/compile.jsonl

Results: one JSON line per loss (``--out``), and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.contract.cases

from tests.contract.cases import make_call

import losslab
from losslab import registry


def _break_site(reason) -> str:
    frames = [f for f in reason.user_stack if "losslab" in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{f.filename.split('src/')[-1]}:{f.lineno}"


def _best(fn, iters: int) -> float:
    best = float("inf")
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def probe(name: str, *, timed: bool, iters: int) -> dict:
    spec = registry.spec(name)
    module = losslab.create(name, **dict(spec.example_hparams))
    if spec.needs_index:
        module.eval()  # per-sample state would change between the traced and timed calls
    call = make_call(spec, dtype=torch.float32)
    torch._dynamo.reset()
    out: dict = {"loss": name, "kind": spec.kind}
    t0 = time.perf_counter()
    try:
        ex = torch._dynamo.explain(module)(*call.args, **call.kwargs)
    except Exception as e:  # a loss that cannot be traced at all is a result, not a crash
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        return out
    out["explain_s"] = round(time.perf_counter() - t0, 2)
    out["graph_breaks"] = ex.graph_break_count
    out["sites"] = sorted({f"{str(b.reason).splitlines()[0][:60]} @ {_break_site(b)}"
                           for b in ex.break_reasons})
    if timed:
        def step(m=module) -> None:
            value = m(*call.args, **call.kwargs)
            value.sum().backward()

        compiled = torch.compile(module)

        def cstep() -> None:
            value = compiled(*call.args, **call.kwargs)
            value.sum().backward()

        step()
        cstep()  # compile
        out["eager_ms"] = 1e3 * _best(step, iters)
        out["compiled_ms"] = 1e3 * _best(cstep, iters)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--names", nargs="+", help="losses to probe (default: all registered)")
    ap.add_argument("--time", action="store_true", help="also time eager vs compiled")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", help="JSON lines file")
    args = ap.parse_args()
    names = args.names or sorted(registry.available())
    rows = []
    sink = open(args.out, "a") if args.out else None
    for name in names:
        row = probe(name, timed=args.time, iters=args.iters)
        rows.append(row)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        print(f"{name:28s} breaks={row.get('graph_breaks', 'error')} "
              f"{row.get('error', '')}{'; '.join(row.get('sites', []))[:200]}", flush=True)
    clean = sum(r.get("graph_breaks") == 0 for r in rows)
    print(f"\n{clean} of {len(rows)} losses trace without graph breaks")


if __name__ == "__main__":
    main()
