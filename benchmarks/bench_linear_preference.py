"""Benchmark: losslab's fused linear preference loss
(:func:`losslab.losses.preference.linear_preference_loss`) against the naive two-head
computation, fwd+bwd, on this machine's CPU.

``naive``: the reference model's logits under ``torch.no_grad()`` (``r = h_ref @ W_ref.T``,
for the losses with a reference model), the policy's ``z = h @ W.T`` with autograd, both
``[2B, T, V]``, then ``log_softmax``, ``gather`` of the targets, the per-sequence sums (and
token counts) and the preference function of :mod:`losslab.losses.preference`, then
``backward()``: the full logits plus autograd's log-softmax buffers. ``losslab``:
``linear_preference_loss(h, W, target, loss=..., ref_hidden=h_ref, ref_weight=W_ref)``
(chunked; the reference head through the same chunked path without gradient).

Methodology (as ``bench_linear_kd.py``; the machine is shared): every measurement is a fresh
subprocess (inputs created, one warm-up fwd+bwd, ``--iters`` timed ones, the best kept); the
implementations of a case are interleaved round by round (order reversed on odd rounds) and
the ratio ours / naive is taken per round, the table giving the median over rounds. ``extra``
= peak RSS - RSS after the inputs were created; ``extra - grads`` subtracts the bytes of the
gradients both must return (``dh + dW``). Targets of issue #14: memory ``extra - grads`` at
most 0.15x of naive's, time at most 1.0x.

    PYTHONPATH=src python benchmarks/bench_linear_preference.py             # dpo and simpo, fp32
    PYTHONPATH=src python benchmarks/bench_linear_preference.py --loss orpo --rounds 3
    python benchmarks/bench_linear_preference.py --report benchmarks/results/linear_preference.jsonl
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
WITH_REFERENCE = ("dpo", "ipo", "kto", "normalized_preference")


def run_case(impl: str, b: int, t: int, d: int, d_ref: int, v: int, dtype_name: str,
             loss: str, iters: int, threads: int) -> dict:
    import inspect

    import torch

    from losslab.losses.preference import FUSED_PREFERENCE_LOSSES, linear_preference_loss

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    g = torch.Generator().manual_seed(0)
    h = torch.empty(2 * b, t, d, dtype=dtype).normal_(0, 1, generator=g).requires_grad_(True)
    w = torch.empty(v, d, dtype=dtype).normal_(0, 0.05, generator=g).requires_grad_(True)
    target = torch.randint(0, v, (2 * b, t), generator=g)
    target[:, : t // 4] = -100  # the prompt positions are not scored
    use_ref = loss in WITH_REFERENCE
    h_ref = torch.empty(2 * b, t, d_ref, dtype=dtype).normal_(0, 1, generator=g)
    w_ref = torch.empty(v, d_ref, dtype=dtype).normal_(0, 0.05, generator=g)
    fn = FUSED_PREFERENCE_LOSSES[loss]
    takes_length = "chosen_length" in inspect.signature(fn).parameters

    def seq_logps(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = target != -100
        lp = torch.log_softmax(z.float(), -1)
        tok = lp.gather(-1, torch.where(valid, target, 0).unsqueeze(-1)).squeeze(-1)
        return torch.where(valid, tok, 0.0).sum(1), valid.sum(1).float()

    if impl == "naive":
        def step() -> torch.Tensor:
            kw: dict = {}
            if use_ref:
                with torch.no_grad():
                    r, _ = seq_logps(h_ref @ w_ref.T)
                kw.update(ref_chosen=r[:b], ref_rejected=r[b:])
            s, n = seq_logps(h @ w.T)
            if takes_length:
                kw.update(chosen_length=n[:b], rejected_length=n[b:])
            return fn(s[:b], s[b:], **kw)
    elif impl == "losslab":
        def step() -> torch.Tensor:
            if use_ref:
                return linear_preference_loss(h, w, target, loss=loss, ref_hidden=h_ref,
                                              ref_weight=w_ref)
            return linear_preference_loss(h, w, target, loss=loss)
    else:
        raise ValueError(f"unknown impl {impl!r}")

    grads = (2 * b * t * d + v * d) * h.element_size() / 2**20
    return {"impl": impl, "B": b, "T": t, "d": d, "d_ref": d_ref, "V": v, "dtype": dtype_name,
            "loss_name": loss, "threads": threads,
            **measure_fwd_bwd(step, (h, w), iters, grads)}


def summarize(rows: list[dict]) -> str:
    out = []
    cases = sorted({(r["loss_name"], r["dtype"], r["B"], r["T"], r["V"]) for r in rows})
    for name, dt, b, t, v in cases:
        sub = [r for r in rows if (r["loss_name"], r["dtype"], r["B"], r["T"], r["V"])
               == (name, dt, b, t, v)]
        rounds = sorted({r["round"] for r in sub})
        by = {(r["round"], r["impl"]): r for r in sub}
        loads = [x for r in sub for x in (r["load_before"], r["load_after"])]
        d, d_ref = sub[0]["d"], sub[0]["d_ref"]
        ref = f", reference head d={d_ref}" if name in WITH_REFERENCE else ", reference-free"
        out.append(f"#### {name}, {dt} (B={b} pairs, T={t}, N=2BT={2 * b * t}, d={d}{ref}, "
                   f"V={v}, {len(rounds)} rounds, load avg {min(loads):.1f} to "
                   f"{max(loads):.1f})\n")
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
    ap.add_argument("--B", type=int, default=8, help="preference pairs")
    ap.add_argument("--T", type=int, default=256, help="positions per completion")
    ap.add_argument("--d", type=int, default=256, help="policy hidden width")
    ap.add_argument("--d-ref", type=int, default=256, help="reference hidden width")
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--dtype", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--loss", nargs="+", default=["dpo", "simpo"],
                    choices=["dpo", "ipo", "kto", "simpo", "cpo", "orpo",
                             "normalized_preference"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--iters", type=int, default=1, help="timed iterations after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "linear_preference"))
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
        for name in a.loss:
            for dt in a.dtype:
                for k in range(a.rounds):
                    order = IMPLS if k % 2 == 0 else IMPLS[::-1]
                    for impl in order:
                        case = dict(impl=impl, b=a.B, t=a.T, d=a.d, d_ref=a.d_ref, v=a.V,
                                    dtype_name=dt, loss=name, iters=a.iters,
                                    threads=a.threads)
                        res = subprocess.run(
                            [sys.executable, __file__, "--case", json.dumps(case)],
                            capture_output=True, text=True, check=True)
                        row = json.loads(res.stdout.strip().splitlines()[-1]) | {"round": k}
                        rows.append(row)
                        f.write(json.dumps(row) + "\n")
                        f.flush()
                        print(f"{name} {dt} round {k} {impl}: {row['wall_s']:.2f} s, extra "
                              f"{row['extra_mib']:.0f} MiB", flush=True)
    table = summarize(rows)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
