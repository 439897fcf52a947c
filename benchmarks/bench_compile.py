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


def _kernel_call(kind: str, n: int):
    """Inputs of kernel size for ``--kernel-size N`` (paired / embeddings / linear kinds):
    ``[N, 128]`` embeddings with N / 8 classes, or N tokens, d = 256, V = 8192."""
    g = torch.Generator().manual_seed(0)
    if kind == "paired":
        args = (torch.randn(n, 128, generator=g, requires_grad=True),
                torch.randn(n, 128, generator=g, requires_grad=True))
    elif kind == "embeddings":
        args = (torch.randn(n, 128, generator=g, requires_grad=True),
                torch.randint(0, max(n // 8, 2), (n,), generator=g))
    elif kind == "linear":
        args = (torch.randn(n, 256, generator=g, requires_grad=True),
                torch.randn(8192, 256, generator=g).mul_(0.05).requires_grad_(True),
                torch.randint(0, 8192, (n,), generator=g))
    else:
        raise SystemExit(f"--kernel-size supports the paired, embeddings, linear kinds, not {kind}")
    return type("KernelCall", (), {"args": args, "kwargs": {}})


def probe(name: str, *, timed: bool, iters: int, kernel_size: int | None = None) -> dict:
    spec = registry.spec(name)
    hp = dict(spec.example_hparams)
    if kernel_size is not None and spec.kind == "embeddings" and "num_classes" in hp:
        hp["num_classes"], hp["embedding_dim"] = max(kernel_size // 8, 2), 128
    module = losslab.create(name, **hp)
    if spec.needs_index:
        module.eval()  # per-sample state would change between the traced and timed calls
    call = (make_call(spec, dtype=torch.float32) if kernel_size is None
            else _kernel_call(spec.kind, kernel_size))
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
    ap.add_argument("--kernel-size", type=int, help="time on inputs of this size N instead of "
                    "the contract suite's (paired, embeddings and linear kinds)")
    args = ap.parse_args()
    names = args.names or sorted(registry.available())
    rows = []
    sink = open(args.out, "a") if args.out else None
    for name in names:
        row = probe(name, timed=args.time, iters=args.iters, kernel_size=args.kernel_size)
        if args.kernel_size is not None:
            row["n"] = args.kernel_size
        rows.append(row)
        if sink:
            sink.write(json.dumps(row) + "\n")
            sink.flush()
        times = (f" eager {row['eager_ms']:.1f} ms, compiled {row['compiled_ms']:.1f} ms"
                 if "eager_ms" in row else "")
        print(f"{name:28s} breaks={row.get('graph_breaks', 'error')}{times} "
              f"{row.get('error', '')}{'; '.join(row.get('sites', []))[:200]}", flush=True)
    clean = sum(r.get("graph_breaks") == 0 for r in rows)
    print(f"\n{clean} of {len(rows)} losses trace without graph breaks")


if __name__ == "__main__":
    main()
