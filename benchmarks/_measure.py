"""The measurement of one fused-head benchmark case, shared by ``bench_linear_cross_entropy.py``
and ``bench_linear_kd.py``: one warm-up forward+backward (excluded), then ``iters`` timed ones;
wall and process CPU time of each, and the memory the first pass added."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any


def rss_mib() -> float:
    """Resident set size of this process now, in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_fwd_bwd(step: Callable[[], Any], params: Sequence[Any], iters: int,
                    grads_mib: float) -> dict:
    """Run ``step().backward()`` ``iters + 1`` times (gradients of ``params`` reset before
    each). ``extra`` = peak RSS (``ru_maxrss``) minus the RSS before the first pass (the inputs
    exist by then); ``extra_minus_grads`` also subtracts ``grads_mib``, the gradients every
    method must return. Times: the best timed iteration, and all of them (``iters=0``: the
    one pass, warm-up included, for a memory-only measurement of a case too slow to repeat)."""
    rss0 = rss_mib()
    load0 = os.getloadavg()[0]
    walls, cpus = [], []
    loss_val = float("nan")
    for i in range(iters + 1):
        for p in params:
            p.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step()
        loss.backward()
        el, ce = time.perf_counter() - t0, time.process_time() - c0
        loss_val = float(loss.detach().float())
        del loss
        if i > 0 or iters == 0:
            walls.append(el)
            cpus.append(ce)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "wall_s": min(walls), "cpu_s": min(cpus), "walls": walls, "cpus": cpus,
        "peak_rss_mib": peak, "rss_after_inputs_mib": rss0, "extra_mib": peak - rss0,
        "extra_minus_grads_mib": peak - rss0 - grads_mib, "grads_mib": grads_mib,
        "loss": loss_val, "load_before": load0, "load_after": os.getloadavg()[0],
    }
