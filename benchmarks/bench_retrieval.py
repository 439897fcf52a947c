"""MAP@R (+ R-precision, P@1) of losslab vs PML's AccuracyCalculator, time and peak memory.

Each implementation runs in a fresh subprocess on the same data (N x D float32, C classes,
query set against itself): peak memory = ``ru_maxrss`` growth during the call. PML is
configured to the same definition: ``AccuracyCalculator(k="max_bin_count",
knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))``.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=src python benchmarks/bench_retrieval.py \
        [--n 100000 --dim 128 --classes 1000] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def data(n: int, d: int, c: int):
    import torch

    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % c
    centers = torch.randn(c, d, generator=g)
    x = centers[y] + 2.0 * torch.randn(n, d, generator=g)
    return x, y


def worker(a: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(a.threads)
    x, y = data(a.n, a.dim, a.classes)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if a.impl == "ours":
        from losslab.metrics import retrieval_metrics

        m = retrieval_metrics(x, y, metrics=("map_at_r", "r_precision", "precision_at_1"),
                              backend="torch")
        out = {k: m[k] for k in ("map_at_r", "r_precision", "precision_at_1")}
    else:
        from pytorch_metric_learning.distances import LpDistance
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
        from pytorch_metric_learning.utils.inference import CustomKNN

        ac = AccuracyCalculator(
            include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
            k="max_bin_count", device=torch.device("cpu"),
            knn_func=CustomKNN(LpDistance(normalize_embeddings=False), batch_size=a.pml_batch))
        m = ac.get_accuracy(x, y, x, y, ref_includes_query=True)
        out = {"map_at_r": m["mean_average_precision_at_r"], "r_precision": m["r_precision"],
               "precision_at_1": m["precision_at_1"]}
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"time_s": dt, "peak_mib": (peak - base) / 1024.0, **out}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pml-batch", type=int, default=None,
                    help="CustomKNN batch_size (default: unchunked, PML's default)")
    a = ap.parse_args()
    if a.worker:
        worker(a)
        return
    res = {}
    for impl in ("ours", "pml"):
        cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--n", str(a.n), "--dim",
               str(a.dim), "--classes", str(a.classes), "--threads", str(a.threads)]
        if a.pml_batch:
            cmd += ["--pml-batch", str(a.pml_batch)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        res[impl] = (json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0
                     else {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]})
        print(impl, res[impl], flush=True)
    o, t = res["ours"], res["pml"]
    if "error" not in o and "error" not in t:
        print(f"N={a.n} D={a.dim} C={a.classes}: speed-up {t['time_s'] / o['time_s']:.2f}x, "
              f"memory ratio {t['peak_mib'] / max(o['peak_mib'], 0.1):.2f}x, MAP@R equal: "
              f"{abs(o['map_at_r'] - t['map_at_r']) < 1e-6}")


if __name__ == "__main__":
    main()
