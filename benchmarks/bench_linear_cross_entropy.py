"""Benchmark: losslab's chunked linear+cross-entropy against naive torch and torch's own
``F.linear_cross_entropy`` (chunked paths), fwd+bwd, on this machine's CPU.

Methodology (the machine is shared, so contention is part of the design):

* every measurement is a fresh subprocess: inputs created in place, ``torch.set_num_threads``,
  one warm-up fwd+bwd (excluded), then ``--iters`` timed fwd+bwd iterations (the best is kept);
* the implementations of one (V, dtype) case are **interleaved**: round r runs every impl once,
  in forward order on even rounds and reversed on odd rounds (A B C, C B A, ...), so slow
  phases of the machine hit all of them alike;
* ratios are computed **per round** (ours / naive measured in the same round, back to back)
  and the table reports the **median over rounds**, for wall time and for process CPU time
  (user+sys of all threads);
* ``os.getloadavg()`` is recorded around every measurement;
* memory: ``extra`` = peak RSS (``ru_maxrss``) - RSS after the inputs were created (it
  includes the gradients); ``extra - grads`` additionally subtracts the bytes of the gradients
  every method must return (dh + dW in the input dtype). Memory is deterministic to ~10 MiB.

Impls: ``naive`` = ``F.cross_entropy(h @ W.T, t); loss.backward()`` in the input dtype (bf16
logits for bf16); ``naive_fp32_logits`` = ``F.cross_entropy((h @ W.T).float(), t)`` (HF-style
upcast; bf16 only); ``torch_ref`` = ``F.linear_cross_entropy(h, W, t)`` (options=None, the
reference path); ``torch_chunked`` = ``options=LinearCrossEntropyOptions()`` (torch's default
chunked options); ``torch_chunked_bs1024`` = ``LinearCrossEntropyOptions(batch_chunk_size=
1024)``; ``losslab`` = :func:`losslab.functional.linear_cross_entropy_loss` with default
options. Variants: ``losslab:weight_grad=vocab_major``,
``losslab:weight_grad=vocab_blocks,chunk_size=512`` etc. (int, float or
string values). ``before`` (and ``before:key=value,...``) is ``losslab`` imported from another
source tree, ``--before-src DIR`` (e.g. an export of an earlier commit): a change to the kernel
is compared with the code before it, interleaved in the same run.

    PYTHONPATH=src python benchmarks/bench_linear_cross_entropy.py            # full grid
    PYTHONPATH=src python benchmarks/bench_linear_cross_entropy.py --V 32000 --dtype bf16 \\
        --impl naive losslab losslab:weight_grad=token_chunks --rounds 3
    python benchmarks/bench_linear_cross_entropy.py --report benchmarks/results/lce.jsonl
    git archive HEAD~1 | tar -x -C /tmp/prev && PYTHONPATH=src python \
        benchmarks/bench_linear_cross_entropy.py --V 32000 --impl naive before losslab \
        --before-src /tmp/prev/src

Results: one JSON line per measurement in ``<out>.jsonl`` (written as they come), the table
in ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _measure import measure_fwd_bwd

IMPLS = ("naive", "naive_fp32_logits", "torch_ref", "torch_chunked", "torch_chunked_bs1024",
         "losslab", "before")
DEFAULT_IMPLS = ("naive", "naive_fp32_logits", "torch_chunked", "torch_chunked_bs1024",
                 "losslab")
RESULTS = Path(__file__).resolve().parent / "results"
MEM_TARGET, TIME_TARGET, CHUNKED_TARGET = 0.15, 1.0, 0.8


def _parse_kwargs(spec: str) -> dict:
    out: dict = {}
    for item in filter(None, spec.split(",")):
        k, v = item.split("=")
        for parse in (int, float, str):
            try:
                out[k] = parse(v)
                break
            except ValueError:
                continue
    return out


def run_case(impl: str, n: int, d: int, v: int, dtype_name: str, iters: int,
             threads: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    h = torch.empty(n, d, dtype=dtype).normal_(0, 1, generator=g).requires_grad_(True)
    w = torch.empty(v, d, dtype=dtype).normal_(0, 0.02, generator=g).requires_grad_(True)
    t = torch.randint(0, v, (n,), generator=g)
    name, _, spec = impl.partition(":")
    if name in ("losslab", "before"):
        from losslab.functional import linear_cross_entropy_loss

        kw = _parse_kwargs(spec)

        def step() -> torch.Tensor:
            return linear_cross_entropy_loss(h, w, t, **kw)  # type: ignore[return-value]
    elif name == "naive":
        def step() -> torch.Tensor:
            return F.cross_entropy(h @ w.T, t)
    elif name == "naive_fp32_logits":
        def step() -> torch.Tensor:
            return F.cross_entropy((h @ w.T).float(), t)
    elif name == "torch_ref":
        def step() -> torch.Tensor:
            return F.linear_cross_entropy(h, w, t)
    elif name in ("torch_chunked", "torch_chunked_bs1024"):
        opts = (torch.nn.LinearCrossEntropyOptions() if name == "torch_chunked"
                else torch.nn.LinearCrossEntropyOptions(batch_chunk_size=1024))

        def step() -> torch.Tensor:
            return F.linear_cross_entropy(h, w, t, options=opts)
    else:
        raise ValueError(f"unknown impl {impl!r}")

    grads = (n * d + v * d) * h.element_size() / 2**20
    return {"impl": impl, "N": n, "d": d, "V": v, "dtype": dtype_name, "threads": threads,
            **measure_fwd_bwd(step, (h, w), iters, grads)}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def summarize(rows: list[dict]) -> str:
    """Median-of-per-round-ratio table, grouped by (V, dtype)."""
    cases = sorted({(r["V"], r["dtype"]) for r in rows})
    out = []
    for v, dt in cases:
        sub = [r for r in rows if r["V"] == v and r["dtype"] == dt]
        impls = []
        for r in sub:
            if r["impl"] not in impls:
                impls.append(r["impl"])
        by_round: dict[int, dict[str, dict]] = {}
        for r in sub:
            by_round.setdefault(r.get("round", 0), {})[r["impl"]] = r

        def ratios(impl: str, ref: str, key: str, by_round: dict = by_round) -> list[float]:
            return [rd[impl][key] / rd[ref][key] for rd in by_round.values()
                    if impl in rd and ref in rd]

        def mem(impl: str, key: str, sub: list = sub) -> float:
            return _median([r[key] for r in sub if r["impl"] == impl])

        loads = [x for r in sub for x in (r["load_before"], r["load_after"])]
        out.append(f"\n### V={v}, {dt} (N={sub[0]['N']}, d={sub[0]['d']}, "
                   f"{len(by_round)} rounds, load avg {min(loads):.1f} to {max(loads):.1f})\n")
        refs = [x for x in ("naive", "naive_fp32_logits", "torch_chunked",
                            "torch_chunked_bs1024") if x in impls]
        head = ["impl", "wall s (med)", "CPU s (med)", "extra MiB", "extra-grads MiB"]
        for ref in refs:
            head += [f"wall/{ref}", f"CPU/{ref}"]
        head += ["extra/naive", "(extra-grads)/naive"]
        if "naive_fp32_logits" in impls:
            head += ["(extra-grads)/naive_fp32_logits"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for impl in impls:
            cells = [impl, f"{_median([r['wall_s'] for r in sub if r['impl'] == impl]):.2f}",
                     f"{_median([r['cpu_s'] for r in sub if r['impl'] == impl]):.2f}",
                     f"{mem(impl, 'extra_mib'):.0f}", f"{mem(impl, 'extra_minus_grads_mib'):.0f}"]
            for ref in refs:
                cells += [f"{_median(ratios(impl, ref, 'wall_s')):.2f}",
                          f"{_median(ratios(impl, ref, 'cpu_s')):.2f}"]
            if "naive" in impls:
                cells += [f"{mem(impl, 'extra_mib') / mem('naive', 'extra_mib'):.3f}",
                          f"{mem(impl, 'extra_minus_grads_mib') / mem('naive', 'extra_minus_grads_mib'):.3f}"]  # noqa: E501
            else:
                cells += ["", ""]
            if "naive_fp32_logits" in impls:
                cells += [f"{mem(impl, 'extra_minus_grads_mib') / mem('naive_fp32_logits', 'extra_minus_grads_mib'):.3f}"]  # noqa: E501
            out.append("| " + " | ".join(cells) + " |")
        for impl in impls:
            if not impl.startswith(("losslab", "before")) or "naive" not in impls:
                continue
            checks = [
                ("(extra-grads)/naive <= 0.15",
                 mem(impl, "extra_minus_grads_mib") / mem("naive", "extra_minus_grads_mib"),
                 MEM_TARGET),
                ("wall/naive <= 1.0", _median(ratios(impl, "naive", "wall_s")), TIME_TARGET),
                ("CPU/naive <= 1.0", _median(ratios(impl, "naive", "cpu_s")), TIME_TARGET),
            ]
            if "torch_chunked" in impls:
                checks += [
                    ("wall/torch_chunked <= 0.8",
                     _median(ratios(impl, "torch_chunked", "wall_s")), CHUNKED_TARGET),
                    ("CPU/torch_chunked <= 0.8",
                     _median(ratios(impl, "torch_chunked", "cpu_s")), CHUNKED_TARGET),
                ]
            txt = "; ".join(f"{k}: {x:.3f} {'met' if x <= lim else 'NOT met'}"
                            for k, x, lim in checks)
            out.append(f"\nTargets for `{impl}`: {txt}.")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--V", type=int, nargs="+", default=[32000, 128256])
    ap.add_argument("--dtype", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--impl", nargs="+", default=list(DEFAULT_IMPLS),
                    help=f"any of {IMPLS}; losslab:key=value,... for variants")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case")
    ap.add_argument("--iters", type=int, default=1, help="timed iterations after one warm-up "
                    "(0: one pass, warm-up included: memory only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "linear_cross_entropy"))
    ap.add_argument("--report", help="only print the table of an existing .jsonl")
    ap.add_argument("--before-src", help="source tree (the folder holding losslab/) of the "
                    "'before' impls")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.case:
        impl, v, dt = a.case.rsplit("@", 2)
        print(json.dumps(run_case(impl, a.N, a.d, int(v), dt, a.iters, a.threads)))
        return
    if a.report:
        rows = [json.loads(x) for x in Path(a.report).read_text().splitlines() if x.strip()]
        print(summarize(rows))
        return
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if any(i.partition(":")[0] == "before" for i in a.impl) and not a.before_src:
        ap.error("the 'before' impls need --before-src")
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env_before = dict(env, PYTHONPATH=str(a.before_src))
    rows: list[dict] = []
    for v in a.V:
        for dt in a.dtype:
            impls = [i for i in a.impl if not (i == "naive_fp32_logits" and dt == "fp32")]
            for rnd in range(a.rounds):
                order = impls if rnd % 2 == 0 else impls[::-1]
                for impl in order:
                    cmd = [sys.executable, __file__, "--case", f"{impl}@{v}@{dt}", "--N",
                           str(a.N), "--d", str(a.d), "--iters", str(a.iters), "--threads",
                           str(a.threads)]
                    before = impl.partition(":")[0] == "before"
                    res = subprocess.run(cmd, capture_output=True, text=True,
                                         env=env_before if before else env, check=False)
                    if res.returncode != 0:
                        print(f"{impl} V={v} {dt} failed:\n{res.stderr[-2000:]}",
                              file=sys.stderr, flush=True)
                        continue
                    r = json.loads(res.stdout.strip().splitlines()[-1])
                    r["round"] = rnd
                    rows.append(r)
                    with open(out.with_suffix(".jsonl"), "a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"r{rnd} {impl:40s} V={v:6d} {dt}: wall {r['wall_s']:.2f} s, cpu "
                          f"{r['cpu_s']:.2f} s, extra {r['extra_mib']:.0f} MiB "
                          f"(-grads {r['extra_minus_grads_mib']:.0f}), loss {r['loss']:.4f}, "
                          f"load {r['load_before']:.1f}/{r['load_after']:.1f}", flush=True)
    md = summarize(rows)
    print(md)
    out.with_suffix(".md").write_text(
        f"N={a.N}, d={a.d}, threads={a.threads}, rounds={a.rounds}, iters={a.iters} "
        "(+1 warm-up) per process; medians of per-round ratios\n" + md)


if __name__ == "__main__":
    main()
