"""Benchmark: the tiled InfoNCE/CLIP and SigLIP losses against the naive dense computation,
fwd+bwd, on this machine's CPU (issue "Memory-efficient paths at the physical limit", target 2).

Methodology (as ``bench_linear_cross_entropy.py``; the machine is shared):

* every measurement is a fresh subprocess: inputs created in place, ``torch.set_num_threads``,
  one warm-up fwd+bwd (its peak RSS is the memory figure), then ``--iters`` timed fwd+bwd
  iterations (the best is kept; ``--iters 0`` times the first pass);
* the impls of one case are interleaved, round by round, in alternating order, and the time
  ratio is the median over rounds of ``ours / naive`` measured back to back;
* ``extra`` = peak RSS - RSS after the inputs were created (gradients included).

Impls (embeddings ``a, b [B, D]`` fp32 with ``requires_grad``, temperature 0.07):
``clip_naive`` = L2-normalise, ``l = a @ b.T / t``, ``(CE(l, i) + CE(l.T, i)) / 2`` in plain torch;
``clip`` = :func:`losslab.functional.clip_loss` with default options (automatic tiling);
``clip:chunk_size=1024``; ``infonce`` (a -> b only) and ``infonce_naive``;
``siglip_naive`` = ``-logsigmoid(z * (l + bias)).sum() / B`` and ``siglip`` (default options).
open_clip's losses import torchvision, which cannot be installed beside this torch build, so
they are not measured here (the research notes measured them at 0.81-1.19x naive).

    PYTHONPATH=src python benchmarks/bench_tiled_contrastive.py                 # B = 16384
    PYTHONPATH=src python benchmarks/bench_tiled_contrastive.py --B 65536 --impl clip siglip \\
        --iters 0 --rounds 1                                                      # memory only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_IMPLS = ("clip_naive", "clip", "clip:chunk_size=1024", "infonce_naive", "infonce",
                 "siglip_naive", "siglip")
RESULTS = Path(__file__).resolve().parent / "results"
TIME_TARGET, MEM_TARGET = 0.8, 0.05


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(impl: str, n: int, d: int, iters: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a = torch.empty(n, d).normal_(generator=g).requires_grad_(True)
    b = torch.empty(n, d).normal_(generator=g).requires_grad_(True)
    name, _, spec = impl.partition(":")
    kw = {k: int(v) for k, v in (item.split("=") for item in filter(None, spec.split(",")))}
    temp = 0.07

    def dense_logits() -> torch.Tensor:
        return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temp

    if name in ("clip", "infonce", "siglip"):
        import losslab.functional as LF

        fn = {"clip": LF.clip_loss, "infonce": LF.infonce_loss, "siglip": LF.siglip_loss}[name]
        extra = {} if name == "siglip" else {"temperature": temp}

        def step() -> torch.Tensor:
            return fn(a, b, **extra, **kw)
    elif name == "clip_naive":
        def step() -> torch.Tensor:
            lg, y = dense_logits(), torch.arange(n)
            return (F.cross_entropy(lg, y) + F.cross_entropy(lg.t(), y)) / 2
    elif name == "infonce_naive":
        def step() -> torch.Tensor:
            return F.cross_entropy(dense_logits(), torch.arange(n))
    elif name == "siglip_naive":
        def step() -> torch.Tensor:
            # losslab's SigLIP defaults: temperature 0.1, bias -10 (the paper's init)
            lg = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / 0.1 - 10.0
            z = 2 * torch.eye(n) - 1
            return -F.logsigmoid(z * lg).sum() / n
    else:
        raise ValueError(f"unknown impl {impl!r}")

    rss0 = _rss_mib()
    load0 = os.getloadavg()[0]
    times, cpu, peak_first = [], [], 0.0
    loss_val = float("nan")
    for i in range(iters + 1):
        a.grad = b.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        loss.backward()
        el, ce = time.perf_counter() - t0, time.process_time() - c0
        loss_val = float(loss.detach())
        del loss
        if i == 0:
            peak_first = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if i > 0 or iters == 0:
            times.append(el)
            cpu.append(ce)
    return {
        "impl": impl, "B": n, "D": d, "threads": threads, "wall_s": min(times),
        "cpu_s": min(cpu), "walls": times, "peak_rss_mib": peak_first,
        "rss_after_inputs_mib": rss0, "extra_mib": peak_first - rss0, "loss": loss_val,
        "load_before": load0, "load_after": os.getloadavg()[0],
    }


def _naive_of(impl: str) -> str:
    return impl.partition(":")[0] + "_naive"


def summarize(rows: list[dict]) -> str:
    out = []
    for n in sorted({r["B"] for r in rows}):
        sub = [r for r in rows if r["B"] == n]
        impls = list(dict.fromkeys(r["impl"] for r in sub))
        rounds: dict[int, dict[str, dict]] = {}
        for r in sub:
            rounds.setdefault(r["round"], {})[r["impl"]] = r
        loads = [x for r in sub for x in (r["load_before"], r["load_after"])]
        out.append(f"\n### B={n}, D={sub[0]['D']}, fp32 ({len(rounds)} rounds, load avg "
                   f"{min(loads):.1f} to {max(loads):.1f})\n")
        out.append("| impl | wall s (med) | CPU s (med) | extra MiB | wall / naive | "
                   "CPU / naive | extra / naive | loss |")
        out.append("|---|---|---|---|---|---|---|---|")
        for impl in impls:
            mine = [r for r in sub if r["impl"] == impl]
            ref = _naive_of(impl)
            cells = [impl, f"{statistics.median(r['wall_s'] for r in mine):.2f}",
                     f"{statistics.median(r['cpu_s'] for r in mine):.2f}",
                     f"{statistics.median(r['extra_mib'] for r in mine):.0f}"]
            if ref in impls and impl != ref:
                for key in ("wall_s", "cpu_s"):
                    rs = [rd[impl][key] / rd[ref][key] for rd in rounds.values()
                          if impl in rd and ref in rd]
                    cells.append(f"{statistics.median(rs):.2f}" if rs else "")
                em = statistics.median(r["extra_mib"] for r in mine)
                en = statistics.median(r["extra_mib"] for r in sub if r["impl"] == ref)
                cells.append(f"{em / en:.3f}")
            else:
                cells += ["", "", ""]
            cells.append(f"{mine[0]['loss']:.6f}")
            out.append("| " + " | ".join(cells) + " |")
        for impl in impls:
            ref = _naive_of(impl)
            if ref not in impls or impl == ref:
                continue
            rs = [rd[impl]["wall_s"] / rd[ref]["wall_s"] for rd in rounds.values()
                  if impl in rd and ref in rd]
            em = statistics.median(r["extra_mib"] for r in sub if r["impl"] == impl)
            en = statistics.median(r["extra_mib"] for r in sub if r["impl"] == ref)
            t, m = statistics.median(rs), em / en
            out.append(f"- {impl}: time {t:.2f}x naive (target <= {TIME_TARGET}: "
                       f"{'met' if t <= TIME_TARGET else 'NOT met'}), extra memory {m:.3f}x "
                       f"(target <= {MEM_TARGET}: {'met' if m <= MEM_TARGET else 'NOT met'})")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--B", type=int, nargs="+", default=[16384])
    p.add_argument("--D", type=int, default=512)
    p.add_argument("--impl", nargs="+", default=list(DEFAULT_IMPLS))
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "tiled_contrastive")
    p.add_argument("--report", type=Path, help="only print the table of an existing .jsonl")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        impl, n = args.case.split("@")
        print(json.dumps(run_case(impl, int(n), args.D, args.iters, args.threads)))
        return
    if args.report:
        print(summarize([json.loads(x) for x in args.report.read_text().splitlines() if x]))
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = args.out.with_suffix(".jsonl")
    rows = []
    with jsonl.open("w") as f:
        for n in args.B:
            for rd in range(args.rounds):
                order = args.impl if rd % 2 == 0 else list(reversed(args.impl))
                for impl in order:
                    cmd = [sys.executable, __file__, "--case", f"{impl}@{n}", "--D",
                           str(args.D), "--iters", str(args.iters), "--threads",
                           str(args.threads)]
                    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
                    if res.returncode != 0:
                        print(f"{impl} B={n}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                        continue
                    row = json.loads(res.stdout.strip().splitlines()[-1]) | {"round": rd}
                    rows.append(row)
                    f.write(json.dumps(row) + "\n")
                    f.flush()
                    print(f"B={n} round {rd} {impl}: {row['wall_s']:.2f} s, "
                          f"extra {row['extra_mib']:.0f} MiB", flush=True)
    table = summarize(rows)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
