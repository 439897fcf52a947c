"""Benchmark: losslab's chunked linear+cross-entropy against naive torch and torch's own
``F.linear_cross_entropy`` (reference path and chunked paths), fwd+bwd, on this machine's CPU.

Each (impl, V, dtype) case runs in a fresh subprocess: inputs are created in place, then one
warm-up and ``--reps`` timed fwd+bwd iterations (gradients freed between iterations). Memory:
``extra`` = peak RSS (``ru_maxrss``) minus RSS after the inputs were created; it includes the
gradients dh and dW every method must produce; ``extra - grads`` removes them.

    PYTHONPATH=src python benchmarks/bench_linear_cross_entropy.py            # full table
    PYTHONPATH=src python benchmarks/bench_linear_cross_entropy.py --V 32000 --dtype bf16

Results: ``benchmarks/results/linear_cross_entropy.{jsonl,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

IMPLS = ("naive", "naive_upcast", "torch_ref", "torch_chunked", "torch_chunked_bs1024", "losslab")
RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_case(impl: str, n: int, d: int, v: int, dtype_name: str, reps: int, threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    h = torch.empty(n, d, dtype=dtype).normal_(0, 1, generator=g).requires_grad_(True)
    w = torch.empty(v, d, dtype=dtype).normal_(0, 0.02, generator=g).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g)
    if impl == "losslab":
        from losslab.functional import linear_cross_entropy_loss

        def step() -> torch.Tensor:
            return linear_cross_entropy_loss(h, w, t)  # type: ignore[return-value]
    elif impl == "naive":
        def step() -> torch.Tensor:
            return F.cross_entropy(h @ w.T, t)
    elif impl == "naive_upcast":  # fp32 logits for the loss, as HF models do
        def step() -> torch.Tensor:
            return F.cross_entropy((h @ w.T).float(), t)
    elif impl == "torch_ref":
        def step() -> torch.Tensor:
            return F.linear_cross_entropy(h, w, t)
    else:
        opts = (torch.nn.LinearCrossEntropyOptions() if impl == "torch_chunked"
                else torch.nn.LinearCrossEntropyOptions(batch_chunk_size=1024))

        def step() -> torch.Tensor:
            return F.linear_cross_entropy(h, w, t, options=opts)

    rss0 = _rss_mib()
    times, cpu = [], []
    loss_val = float("nan")
    for i in range(reps + 1):
        h.grad = None
        w.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        loss.backward()
        el, ce = time.perf_counter() - t0, time.process_time() - c0
        loss_val = float(loss.detach().float())
        del loss
        if i > 0:
            times.append(el)
            cpu.append(ce)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    grads = (n * d + v * d) * h.element_size() / 2**20
    return {
        "impl": impl, "N": n, "d": d, "V": v, "dtype": dtype_name, "threads": threads,
        "time_s": min(times), "times": times, "cpu_s": min(cpu), "peak_rss_mib": peak,
        "rss_after_inputs_mib": rss0, "extra_mib": peak - rss0,
        "extra_minus_grads_mib": peak - rss0 - grads, "grads_mib": grads, "loss": loss_val,
        "load": os.getloadavg()[0],
    }


def table(rows: list[dict]) -> str:
    out = [
        "| V | dtype | impl | time s | CPU s | extra MiB | extra-grads MiB | time/naive | "
        "time/torch_chunked | time/torch_chunked_bs1024 | extra/naive | time/naive_upcast | "
        "extra/naive_upcast | targets met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["V"], r["dtype"], r["impl"]): r for r in rows}
    for (v, dt, impl), r in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                               IMPLS.index(kv[0][2]))):
        nv = by.get((v, dt, "naive"))
        tc = by.get((v, dt, "torch_chunked"))
        tb = by.get((v, dt, "torch_chunked_bs1024"))
        rt = r["time_s"] / nv["time_s"] if nv else float("nan")
        rc = r["time_s"] / tc["time_s"] if tc else float("nan")
        rb = r["time_s"] / tb["time_s"] if tb else float("nan")
        rm = r["extra_mib"] / nv["extra_mib"] if nv else float("nan")
        nu = by.get((v, dt, "naive_upcast"), nv)
        ru = r["time_s"] / nu["time_s"] if nu else float("nan")
        rmu = r["extra_mib"] / nu["extra_mib"] if nu else float("nan")
        met = ""
        if impl == "losslab":
            checks = {"mem<=0.15": rm <= 0.15, "t/naive<=1.0": rt <= 1.0,
                      "mem/upcast<=0.15": rmu <= 0.15, "t/upcast<=1.0": ru <= 1.0,
                      "t/chunked<=0.8": rc <= 0.8, "t/chunked_bs<=0.8": rb <= 0.8}
            met = ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in checks.items())
        out.append(
            f"| {v} | {dt} | {impl} | {r['time_s']:.2f} | {r['cpu_s']:.2f} | "
            f"{r['extra_mib']:.0f} | {r['extra_minus_grads_mib']:.0f} | {rt:.2f} | {rc:.2f} | "
            f"{rb:.2f} | {rm:.3f} | {ru:.2f} | {rmu:.3f} | {met} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--V", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--impl", nargs="+", default=list(IMPLS), choices=IMPLS)
    ap.add_argument("--reps", type=int, default=2, help="timed iterations after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "linear_cross_entropy"))
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        impl, v, dt = a.case.split(":")
        print(json.dumps(run_case(impl, a.N, a.d, int(v), dt, a.reps, a.threads)))
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    for v in a.V:
        for dt in a.dtype:
            for impl in a.impl:
                if impl == "naive_upcast" and dt == "fp32":
                    continue  # identical to naive
                cmd = [sys.executable, __file__, "--case", f"{impl}:{v}:{dt}", "--N", str(a.N),
                       "--d", str(a.d), "--reps", str(a.reps), "--threads", str(a.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                if res.returncode != 0:
                    print(f"{impl} V={v} {dt} failed:\n{res.stderr[-2000:]}", file=sys.stderr)
                    continue
                r = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append(r)
                with open(out.with_suffix(".jsonl"), "a") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"{impl:22s} V={v:6d} {dt}: {r['time_s']:.2f} s (cpu {r['cpu_s']:.2f}), "
                      f"extra {r['extra_mib']:.0f} MiB, loss {r['loss']:.4f}, "
                      f"load {r['load']:.2f}", flush=True)
    md = table(rows)
    print(md)
    out.with_suffix(".md").write_text(
        f"N={a.N}, d={a.d}, threads={a.threads}, reps={a.reps} (+1 warm-up), best time\n\n"
        + md + "\n"
    )


if __name__ == "__main__":
    main()
