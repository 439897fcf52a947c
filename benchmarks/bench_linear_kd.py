"""Benchmark: losslab's fused linear KD / JSD (:func:`losslab.kernels.linear_kd.linear_kd`)
against the naive two-head computation, fwd+bwd, on this machine's CPU.

``naive``: the teacher's logits under ``torch.no_grad()`` (``t = h_t @ W_t.T``), the student's
``s = h_s @ W_s.T`` with autograd, then ``kd_loss(s, t, alpha=1, temperature=T)`` (``kl``) or
``jsd_loss(s, t, beta=0.5)`` (``jsd``) and ``backward()``: two full ``N x V`` logits plus
autograd's softmax buffers. ``losslab``: ``linear_kd(h_s, W_s, h_t, W_t, divergence=...)``.

Methodology (as ``bench_linear_cross_entropy.py``; the machine is shared): every measurement is
a fresh subprocess (inputs created, one warm-up fwd+bwd, ``--iters`` timed ones, the best
kept); the implementations of a case are interleaved round by round (order reversed on odd
rounds) and the ratio ours / naive is taken per round, the table giving the median over
rounds. ``extra`` = peak RSS - RSS after the inputs were created; ``extra - grads`` subtracts
the bytes of the gradients both must return (``dh_s + dW_s``). Targets of issue #14: memory
``extra - grads`` at most 0.15x of naive's, time at most 1.0x.

    PYTHONPATH=src python benchmarks/bench_linear_kd.py                 # kl and jsd, fp32
    PYTHONPATH=src python benchmarks/bench_linear_kd.py --divergence jsd --rounds 3
    python benchmarks/bench_linear_kd.py --report benchmarks/results/linear_kd.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _measure import measure_fwd_bwd

RESULTS = Path(__file__).resolve().parent / "results"
MEM_TARGET, TIME_TARGET = 0.15, 1.0
IMPLS = ("naive", "losslab")


def run_case(impl: str, n: int, ds: int, dt: int, v: int, dtype_name: str, divergence: str,
             temperature: float, iters: int, threads: int) -> dict:
    import torch

    from losslab.functional import jsd_loss, kd_loss
    from losslab.kernels.linear_kd import linear_kd

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    hs = torch.empty(n, ds, dtype=dtype).normal_(0, 1, generator=g).requires_grad_(True)
    ws = torch.empty(v, ds, dtype=dtype).normal_(0, 0.05, generator=g).requires_grad_(True)
    ht = torch.empty(n, dt, dtype=dtype).normal_(0, 1, generator=g)
    wt = torch.empty(v, dt, dtype=dtype).normal_(0, 0.05, generator=g)

    if impl == "naive":
        def step() -> torch.Tensor:
            with torch.no_grad():
                t = ht @ wt.T
            s = hs @ ws.T
            if divergence == "kl":
                return kd_loss(s, t, alpha=1.0, temperature=temperature)
            return jsd_loss(s, t, beta=0.5, temperature=temperature)
    elif impl == "losslab":
        def step() -> torch.Tensor:
            return linear_kd(hs, ws, ht, wt, divergence=divergence, beta=0.5,
                             temperature=temperature)
    else:
        raise ValueError(f"unknown impl {impl!r}")

    grads = (n * ds + v * ds) * hs.element_size() / 2**20
    return {"impl": impl, "N": n, "d_s": ds, "d_t": dt, "V": v, "dtype": dtype_name,
        "divergence": divergence, "threads": threads,
            **measure_fwd_bwd(step, (hs, ws), iters, grads)}


def summarize(rows: list[dict]) -> str:
    out = []
    cases = sorted({(r["divergence"], r["dtype"], r["N"], r["V"]) for r in rows})
    for div, dt, n, v in cases:
        sub = [r for r in rows if (r["divergence"], r["dtype"], r["N"], r["V"]) == (div, dt, n, v)]
        rounds = sorted({r["round"] for r in sub})
        by = {(r["round"], r["impl"]): r for r in sub}
        loads = [x for r in sub for x in (r["load_before"], r["load_after"])]
        d_s, d_t = sub[0]["d_s"], sub[0]["d_t"]
        out.append(f"#### {div}, {dt} (N={n}, d_s={d_s}, d_t={d_t}, V={v}, {len(rounds)} "
                   f"rounds, load avg {min(loads):.1f} to {max(loads):.1f})\n")
        out.append("| impl | wall s (best) | time / naive (median) | CPU / naive | extra MiB | "
                   "extra - grads MiB | mem / naive (extra - grads) | loss |")
        out.append("|---|---|---|---|---|---|---|---|")
        for impl in IMPLS:
            mine = [by[(k, impl)] for k in rounds if (k, impl) in by]
            if not mine:
                continue
            ratio_t = [by[(k, impl)]["wall_s"] / by[(k, "naive")]["wall_s"] for k in rounds
                       if (k, impl) in by and (k, "naive") in by]
            ratio_c = [by[(k, impl)]["cpu_s"] / by[(k, "naive")]["cpu_s"] for k in rounds
                       if (k, impl) in by and (k, "naive") in by]
            mem = statistics.median(r["extra_minus_grads_mib"] for r in mine)
            naive_mem = statistics.median(by[(k, "naive")]["extra_minus_grads_mib"]
                                          for k in rounds if (k, "naive") in by)
            out.append(
                f"| {impl} | {min(r['wall_s'] for r in mine):.2f} | "
                f"{statistics.median(ratio_t):.2f} | {statistics.median(ratio_c):.2f} | "
                f"{statistics.median(r['extra_mib'] for r in mine):.0f} | {mem:.0f} | "
                f"{mem / naive_mem:.3f} | {mine[0]['loss']:.6f} |")
        out.append(f"\nTargets: time / naive <= {TIME_TARGET}, mem / naive <= {MEM_TARGET}.\n")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--d-s", type=int, default=256, help="student hidden width")
    ap.add_argument("--d-t", type=int, default=384, help="teacher hidden width")
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--divergence", nargs="+", default=["kl", "jsd"], choices=["kl", "jsd"])
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--iters", type=int, default=1, help="timed iterations after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "linear_kd"))
    ap.add_argument("--report", help="only print the table of an existing .jsonl")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        print(json.dumps(run_case(**json.loads(a.case))))
        return
    if a.report:
        rows = [json.loads(x) for x in Path(a.report).read_text().splitlines() if x.strip()]
        print(summarize(rows))
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    rows: list[dict] = []
    with jsonl.open("w") as f:
        for div in a.divergence:
            for dt in a.dtype:
                for k in range(a.rounds):
                    order = IMPLS if k % 2 == 0 else IMPLS[::-1]
                    for impl in order:
                        case = dict(impl=impl, n=a.N, ds=a.d_s, dt=a.d_t, v=a.V,
                                    dtype_name=dt, divergence=div,
                                    temperature=a.temperature, iters=a.iters,
                                    threads=a.threads)
                        res = subprocess.run(
                            [sys.executable, __file__, "--case", json.dumps(case)],
                            capture_output=True, text=True, check=True)
                        row = json.loads(res.stdout.strip().splitlines()[-1]) | {"round": k}
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        print(f"{div} {dt} round {k} {impl}: {row['wall_s']:.2f} s, extra "
                              f"{row['extra_mib']:.0f} MiB", flush=True)
    table = summarize(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
