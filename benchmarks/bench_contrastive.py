"""Benchmark: GradCache at a large batch, and the distributed modes' overhead (issue #12).

1. **GradCache** (``losslab.gradcache.cached_backward``) against the direct step (encode the
   whole batch with a graph, loss, backward) for a CLIP step at ``B = 16384``: two small MLP
   towers (``--d-in`` -> ``--hidden`` x ``--layers`` (GELU) -> ``--d-out``), fp32, the CLIP loss
   with its tiled path (``chunk_size=--loss-tile`` in both steps). Reported: the extra peak
   memory (peak RSS minus RSS once the model and the inputs exist, gradients included),
   the time of one step, and the largest difference of the parameter gradients relative to
   their largest entry (equal gradients: ~1e-6 in fp32, a summation-order difference).
   Targets: memory <= 0.2x, time <= 1.5x the direct step.
2. **Distributed overhead**: the loss alone (fwd + bwd on ``[N, D]`` embeddings with
   ``requires_grad``) in one process against 2 gloo processes holding ``N / 2`` rows each, in
   the ``global``, ``local`` (clip, siglip) and ``ring`` (siglip) modes; the time is the
   slowest rank's. Both sides use ``--threads`` threads in all (1 per rank).

Every measurement runs in a fresh subprocess (its own peak RSS), one warm-up step (the memory
figure), then ``--iters`` timed steps, best kept; the impls alternate order over ``--rounds``
and the ratio is the median over rounds of values measured back to back.

    PYTHONPATH=src python benchmarks/bench_contrastive.py                      # both parts
    PYTHONPATH=src python benchmarks/bench_contrastive.py --part gradcache --B 4096
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MEM_TARGET, TIME_TARGET = 0.2, 1.5


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------------------------
# 1. GradCache
# --------------------------------------------------------------------------------------------


def gradcache_case(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch import nn

    import losslab
    from losslab.gradcache import cached_backward

    torch.set_num_threads(args.threads)

    def tower(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        layers: list[nn.Module] = [nn.Linear(args.d_in, args.hidden), nn.GELU()]
        for _ in range(args.layers - 1):
            layers += [nn.Linear(args.hidden, args.hidden), nn.GELU()]
        layers.append(nn.Linear(args.hidden, args.d_out))
        return nn.Sequential(*layers)

    fa, fb = tower(1), tower(2)
    g = torch.Generator().manual_seed(0)
    xa = torch.randn(args.B, args.d_in, generator=g)
    xb = xa + 0.5 * torch.randn(args.B, args.d_in, generator=g)
    loss = losslab.create("clip", chunk_size=args.loss_tile)
    params = [*fa.parameters(), *fb.parameters()]

    def step() -> float:
        for p in params:
            p.grad = None
        if impl == "direct":
            value = loss(fa(xa), fb(xb))
            value.backward()
            return float(value.detach())
        return float(cached_backward(loss, (fa, fb), (xa, xb), chunk_size=args.chunk))

    rss0 = _rss_mib()
    times, value = [], float("nan")
    for i in range(args.iters + 1):
        t0 = time.perf_counter()
        value = step()
        el = time.perf_counter() - t0
        if i == 0:
            peak = _peak_mib()
        if i > 0 or args.iters == 0:
            times.append(el)
    grads = torch.cat([p.grad.reshape(-1) for p in params if p.grad is not None])
    torch.save(grads, Path(args.grads_dir, f"{impl}.pt"))
    return {"impl": impl, "wall_s": min(times), "walls": times, "extra_mib": peak - rss0,
            "loss": value, "load": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------
# 2. Distributed overhead
# --------------------------------------------------------------------------------------------


def _dist_worker(rank: int, world: int, port: int, impl: str, args: argparse.Namespace,
                 out: str) -> None:
    import torch
    import torch.distributed as dist

    from losslab.distributed import DistributedLoss

    torch.set_num_threads(max(1, args.threads // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    name, mode = impl.split(":")
    n = args.N // world
    g = torch.Generator().manual_seed(rank)
    a = torch.randn(n, args.D, generator=g).requires_grad_(True)
    b = torch.randn(n, args.D, generator=g).requires_grad_(True)
    loss = DistributedLoss(name, mode=mode)
    times = []
    for i in range(args.iters + 1):
        a.grad = b.grad = None
        dist.barrier()
        t0 = time.perf_counter()
        loss(a, b).backward()
        el = torch.tensor([time.perf_counter() - t0])
        dist.all_reduce(el, op=dist.ReduceOp.MAX)
        if i > 0 or args.iters == 0:
            times.append(float(el))
    if rank == 0:
        Path(out).write_text(json.dumps({"wall_s": min(times), "walls": times}))
    dist.destroy_process_group()


def distributed_case(impl: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import losslab

    name, mode = impl.split(":")
    if mode == "single":
        torch.set_num_threads(args.threads)
        g = torch.Generator().manual_seed(0)
        a = torch.randn(args.N, args.D, generator=g).requires_grad_(True)
        b = torch.randn(args.N, args.D, generator=g).requires_grad_(True)
        loss = losslab.create(name)
        times = []
        for i in range(args.iters + 1):
            a.grad = b.grad = None
            t0 = time.perf_counter()
            loss(a, b).backward()
            if i > 0 or args.iters == 0:
                times.append(time.perf_counter() - t0)
        return {"impl": impl, "wall_s": min(times), "walls": times,
                "load": os.getloadavg()[0]}
    from torch.multiprocessing.spawn import start_processes

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp, "r.json"))
        start_processes(_dist_worker, args=(2, port, impl, args, out), nprocs=2, join=True,
                        start_method="spawn")
        res = json.loads(Path(out).read_text())
    return {"impl": impl, **res, "load": os.getloadavg()[0]}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

GRADCACHE_IMPLS = ("direct", "gradcache")
DIST_IMPLS = ("clip:single", "clip:global", "clip:local", "siglip:single", "siglip:global",
              "siglip:local", "siglip:ring")


def _run(part: str, impl: str, argv: list[str]) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--case", f"{part}/{impl}", *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if res.returncode != 0:
        print(f"{part}/{impl}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def report_gradcache(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    import torch

    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["impl"]] = r
    t = statistics.median(rd["gradcache"]["wall_s"] / rd["direct"]["wall_s"]
                          for rd in by_round.values() if len(rd) == 2)
    mem = {i: statistics.median(r["extra_mib"] for r in rows if r["impl"] == i)
           for i in GRADCACHE_IMPLS}
    wall = {i: statistics.median(r["wall_s"] for r in rows if r["impl"] == i)
            for i in GRADCACHE_IMPLS}
    loss = {i: next(r["loss"] for r in rows if r["impl"] == i) for i in GRADCACHE_IMPLS}
    gd = torch.load(Path(args.grads_dir, "direct.pt"))
    gc = torch.load(Path(args.grads_dir, "gradcache.pt"))
    rel = float((gd - gc).abs().max() / gd.abs().max())
    m = mem["gradcache"] / mem["direct"]
    loads = [r["load"] for r in rows]
    return [
        f"GradCache, CLIP step, B={args.B}, towers {args.d_in}->{args.hidden}x{args.layers}->"
        f"{args.d_out} (GELU), fp32, encoder chunk {args.chunk}, loss tile {args.loss_tile}, "
        f"{args.threads} thread(s), {len(by_round)} round(s), load {min(loads):.1f}-"
        f"{max(loads):.1f}",
        "| impl | wall s | extra MiB |", "|---|---|---|",
        *(f"| {i} | {wall[i]:.2f} | {mem[i]:.0f} |" for i in GRADCACHE_IMPLS),
        f"- memory {m:.3f}x direct (target <= {MEM_TARGET}: "
        f"{'met' if m <= MEM_TARGET else 'NOT met'}); time {t:.2f}x (target <= {TIME_TARGET}: "
        f"{'met' if t <= TIME_TARGET else 'NOT met'}); gradients: max |diff| / max |g| = "
        f"{rel:.1e}; loss {loss['direct']:.6f} vs {loss['gradcache']:.6f}",
    ]


def report_distributed(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["impl"]] = r
    loads = [r["load"] for r in rows]
    out = [f"Distributed loss overhead, N={args.N} global rows, D={args.D}, fp32, fwd+bwd of "
           f"the loss, {args.threads} thread(s) in all (2 gloo ranks x "
           f"{max(1, args.threads // 2)}), {len(by_round)} round(s), load "
           f"{min(loads):.1f}-{max(loads):.1f}", "| impl | wall s | / single process |",
           "|---|---|---|"]
    for impl in DIST_IMPLS:
        mine = [r for r in rows if r["impl"] == impl]
        if not mine:
            continue
        single = impl.split(":")[0] + ":single"
        ratios = [rd[impl]["wall_s"] / rd[single]["wall_s"] for rd in by_round.values()
                  if impl in rd and single in rd]
        ratio = f"{statistics.median(ratios):.2f}x" if ratios and impl != single else ""
        out.append(f"| {impl} | {statistics.median(r['wall_s'] for r in mine):.3f} | {ratio} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--part", choices=("gradcache", "distributed", "both"), default="both")
    p.add_argument("--B", type=int, default=16384)
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--d-out", type=int, default=128)
    p.add_argument("--chunk", type=int, default=512)
    p.add_argument("--loss-tile", type=int, default=256)
    p.add_argument("--N", type=int, default=8192)
    p.add_argument("--D", type=int, default=256)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dist-impls", nargs="+", default=list(DIST_IMPLS),
                   help="distributed impls to run (name:single|global|local|ring)")
    p.add_argument("--grads-dir", default=str(RESULTS / "contrastive_grads"))
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        part, impl = args.case.split("/")
        fn = gradcache_case if part == "gradcache" else distributed_case
        print(json.dumps(fn(impl, args)))
        return
    Path(args.grads_dir).mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:]]
    argv += ["--grads-dir", args.grads_dir]
    lines: list[str] = []
    for part, impls, report in (("gradcache", GRADCACHE_IMPLS, report_gradcache),
                                ("distributed", tuple(args.dist_impls), report_distributed)):
        if args.part not in (part, "both"):
            continue
        rows = []
        for rd in range(args.rounds):
            for impl in impls if rd % 2 == 0 else tuple(reversed(impls)):
                row = _run(part, impl, argv)
                if row is not None:
                    rows.append(row | {"round": rd})
                    print(f"  {part}/{impl} round {rd}: {row['wall_s']:.3f} s", flush=True)
        lines += ["", *report(rows, args)]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "contrastive.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
