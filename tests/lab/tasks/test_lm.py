"""The LM lab task: the memorisation metric on models that memorise by construction and on a
random model, the objectives of its jobs against float64 loop oracles, and a tiny
configuration end to end (CPython's pydoc topics: no fetch) with resume and the cached
teacher."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from losslab.lab.config import resolve_config
from losslab.lab.results import read_rows
from losslab.lab.runner import run_bench
from losslab.lab.tasks import get_task
from losslab.lab.tasks.lm import (
    CharTransformer,
    LMObjective,
    evaluate_lm,
    greedy_continuation,
    verbatim_memorization,
)
from losslab.registry import create

V = 12


class LookupLM(nn.Module):
    """Memorises ``sequences [N, L]`` by construction: for an input row equal to the first
    ``t`` tokens of a stored sequence, position ``j`` predicts that sequence's token ``j + 1``
    (one-hot logits). ``corrupt_last`` makes it predict a wrong token at position ``L - 2``."""

    def __init__(self, sequences: Tensor, corrupt_last: bool = False) -> None:
        super().__init__()
        self.seq = sequences
        self.corrupt_last = corrupt_last

    def forward(self, ids: Tensor) -> Tensor:
        n, t = ids.shape
        match = (ids[:, None, :] == self.seq[None, :, :t]).all(-1)  # [n, N]
        assert bool((match.sum(1) == 1).all())
        nxt = self.seq[match.float().argmax(1)][:, 1:t + 1].clone()
        if self.corrupt_last and t == self.seq.shape[1] - 1:
            nxt[:, -1] = (nxt[:, -1] + 1) % V
        out = torch.full((n, t, V), -10.0)
        out.scatter_(2, nxt.unsqueeze(-1), 10.0)
        return out


def _sequences(n: int = 20, length: int = 16, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, V, (n, length), generator=g)
    s[:, :2] = torch.stack([torch.arange(n) // V, torch.arange(n) % V], 1)  # distinct prefixes
    return s


def test_memorisation_is_one_for_a_model_that_memorises_and_zero_for_a_random_one():
    seq = _sequences()
    assert verbatim_memorization(LookupLM(seq), seq, prefix=8, suffix=8) == (1.0, 1.0)
    # exact match needs every continuation token: one wrong token of 8 -> 0 exact, 7/8 chars
    exact, match = verbatim_memorization(LookupLM(seq, corrupt_last=True), seq, prefix=8,
                                         suffix=8, batch_size=7)
    assert exact == 0.0 and match == pytest.approx(7 / 8)
    torch.manual_seed(0)
    rand = CharTransformer(V, d_model=16, n_layers=1, n_heads=2, context=16)
    exact, match = verbatim_memorization(rand, seq, prefix=8, suffix=8)
    assert exact == 0.0 and 0.0 <= match < 0.5


def test_greedy_continuation_and_metric_arguments():
    seq = _sequences()
    got = greedy_continuation(LookupLM(seq), seq[:, :5], 7)
    assert torch.equal(got, seq[:, 5:12])
    with pytest.raises(ValueError, match="prefix"):
        verbatim_memorization(LookupLM(seq), seq, prefix=10, suffix=8)
    with pytest.raises(ValueError, match="prefix and suffix"):
        verbatim_memorization(LookupLM(seq), seq, prefix=0, suffix=8)


def test_evaluate_lm_matches_a_loop():
    seq = _sequences()
    torch.manual_seed(1)
    model = CharTransformer(V, d_model=16, n_layers=1, n_heads=2, context=16)
    nll, acc = evaluate_lm(model, seq, batch_size=6)
    with torch.no_grad():
        logits = model(seq[:, :-1]).double()
    tot, hit, cnt = 0.0, 0, 0
    for i in range(seq.shape[0]):
        for j in range(seq.shape[1] - 1):
            row = logits[i, j]
            y = int(seq[i, j + 1])
            tot += float(torch.logsumexp(row, 0) - row[y])
            hit += int(int(row.argmax()) == y)
            cnt += 1
    assert nll == pytest.approx(tot / cnt, rel=1e-5) and acc == pytest.approx(hit / cnt)


def _ce_rows(logits: Tensor, y: Tensor) -> np.ndarray:
    """Per-token CE in float64 with loops: ``[B, T]``."""
    b, t, _ = logits.shape
    out = np.zeros((b, t))
    lg = logits.double()
    for i in range(b):
        for j in range(t):
            row = lg[i, j]
            out[i, j] = float(torch.logsumexp(row, 0) - row[int(y[i, j])])
    return out


def test_objectives_match_loop_oracles():
    from losslab.losses.sequence import goldfish_mask

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 20, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (3, 20), generator=g)
    ce = _ce_rows(logits, y)
    plain = LMObjective(create("cross_entropy"), "logits", None)
    assert float(plain(logits, y)) == pytest.approx(ce.mean(), rel=1e-10)
    # goldfish: the mean CE over the kept tokens only
    keep = goldfish_mask(y, k=2, h=3).numpy()
    assert 0 < keep.sum() < keep.size
    gold = LMObjective(create("cross_entropy"), "logits", "goldfish", goldfish_k=2,
                       goldfish_h=3)
    assert float(gold(logits, y)) == pytest.approx(ce[keep].mean(), rel=1e-10)
    assert gold.kept == pytest.approx(keep.mean())
    # TALR: weights exp(-l / median) normalised to mean 1, as constants
    tau = float(np.median(ce))  # 60 values: torch's median is the lower middle value
    tau = float(np.sort(ce.reshape(-1))[(ce.size - 1) // 2])
    w = np.exp(-ce / tau)
    w = w / w.sum() * w.size
    talr = LMObjective(create("cross_entropy"), "logits", "talr")
    assert float(talr(logits, y)) == pytest.approx((w * ce).sum() / w.sum(), rel=1e-8)
    # loss-based reweighting: one weight per sequence from its mean loss (LinUpper)
    seq_loss = ce.mean(1)
    lo, hi = seq_loss.min(), seq_loss.max()
    h = (2 * seq_loss - (hi + lo)) / (hi - lo)
    f = np.minimum(h + 1, 1.0)
    sw = np.exp(f) / np.exp(f).sum() * 3
    rew = LMObjective(create("cross_entropy"), "logits", "reweight")
    want = sum(sw[i] * ce[i].sum() for i in range(3)) / (sw.sum() * 20)
    assert float(rew(logits, y)) == pytest.approx(want, rel=1e-8)


def test_teacher_objective_is_ce_plus_weighted_distillation_per_sequence_for_sinkhorn():
    import torch.nn.functional as F

    from losslab.losses.distillation.transport import sinkhorn_kd_loss

    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 6, V, generator=g, dtype=torch.float64)
    t = torch.randn(2, 6, V, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (2, 6), generator=g)
    ce = _ce_rows(s, y).mean()
    obj = LMObjective(create("sinkhorn_kd"), "teacher", None, distill_weight=0.5,
                      per_sequence=True)
    want = ce + 0.5 * np.mean([float(sinkhorn_kd_loss(s[i], t[i])) for i in range(2)])
    assert float(obj(s, y, t)) == pytest.approx(want, rel=1e-8)
    kd = LMObjective(create("kd", alpha=1.0), "teacher", None)
    T = 2.0
    kl = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                  reduction="none").sum(-1).mean() * T**2
    assert float(kd(s, y, t)) == pytest.approx(ce + float(kl), rel=1e-8)
    with pytest.raises(ValueError, match="teacher_logits"):
        kd(s, y)


TINY = {"corpus": "pydoc", "seeds": 1, "seq_len": 24, "n_train": 16, "n_val": 16,
        "n_fresh": 40, "fresh_batch": 4,
        "d_model": 16, "n_layers": 1, "n_heads": 2, "epochs": 2, "batch_size": 8,
        "teacher_d_model": 16, "teacher_layers": 1, "teacher_epochs": 1, "mem_prefix": 8,
        "mem_suffix": 8, "device": "cpu", "threads": 1}


def _config(**over):
    task = get_task("lm")
    cfg = {"losses": ["cross_entropy", "cross_entropy@goldfish", "cross_entropy@talr",
                      "cross_entropy@reweight", "kd"], **TINY, **over}
    return task, resolve_config(task, cfg, None)


def test_end_to_end_resume_and_cached_teacher(tmp_path):
    task, cfg = _config()
    out = run_bench(task, cfg, tmp_path / "run", quiet=True)
    rows = read_rows(out / "results.jsonl")
    assert [r["loss"] for r in rows] == cfg["losses"]
    for r in rows:
        m = r["metrics"]
        for k in ("memorized", "mem_char_match", "val_acc", "memorized_val"):
            assert 0.0 <= m[k] <= 100.0
        assert 1.0 < m["val_ppl"] < 96.0 * 4 and math.isfinite(m["train_ppl"])
        assert len(r["curves"]["train_loss"]) == 2  # the student's epochs, not the teacher's
    by = {r["loss"]: r["metrics"] for r in rows}
    assert by["cross_entropy@goldfish"]["tokens_kept"] < 1.0 == by["cross_entropy"]["tokens_kept"]
    assert "teacher_val_ppl" in by["kd"] and "teacher_val_ppl" not in by["cross_entropy"]
    teachers = list((out / "teachers").glob("teacher-s0-*.pt"))
    assert len(teachers) == 1
    md = (out / "table.md").read_text()
    assert "Memorised (%)" in md and "`cross_entropy@goldfish`" in md
    # resume: nothing runs again
    stamp = teachers[0].stat().st_mtime_ns
    run_bench(task, cfg, out, quiet=True)
    assert len(read_rows(out / "results.jsonl")) == len(cfg["losses"])
    # a lost kd row reruns from the saved teacher (not retrained) with the same numbers
    results = out / "results.jsonl"
    kept = [json.dumps(r) for r in rows if r["loss"] != "kd"]
    results.write_text("\n".join(kept) + "\n")
    run_bench(get_task("lm"), cfg, out, quiet=True)
    again = {r["loss"]: r["metrics"] for r in read_rows(results)}
    assert teachers[0].stat().st_mtime_ns == stamp
    for k in ("memorized", "val_ppl", "teacher_val_ppl"):
        assert again["kd"][k] == by["kd"][k]


def test_variants_are_checked_before_any_job():
    with pytest.raises(ValueError, match="no variant 'nope'"):
        _config(losses=["cross_entropy@nope"])
    task, cfg = _config(losses=["kd@goldfish"])
    with pytest.raises(ValueError, match="logits losses"):
        task.validate(cfg)
    task, cfg = _config(losses=["focal@talr"])
    with pytest.raises(ValueError, match="token_weight"):
        task.validate(cfg)
    task, cfg = _config()
    with pytest.raises(ValueError, match="mem_prefix"):
        task.validate({**cfg, "mem_suffix": 30})
    with pytest.raises(ValueError, match="exceeds"):
        task.validate({**cfg, "n_fresh": 10**6})
    with pytest.raises(ValueError, match="kind"):
        _config(losses=["bpr"])


def test_shipped_config_resolves():
    from losslab.lab.config import load_config_file

    task = get_task("lm")
    cfg = resolve_config(task, load_config_file("lm_wordnet"), None)
    assert cfg["losses"][0] == "cross_entropy"
    assert {"cross_entropy@goldfish", "cross_entropy@talr", "cross_entropy@reweight", "kd",
            "dkd", "jsd", "sinkhorn_kd"} <= set(cfg["losses"])
    assert cfg["corpus"] == "wordnet" and cfg["goldfish_k"] == 4
    assert cfg["loss_hparams"]["kd"]["alpha"] == 1.0


def test_variant_suffix_of_a_loss_spec():
    from losslab.lab.tasks.base import Job, parse_loss_spec, split_variant

    assert split_variant("cross_entropy@goldfish") == ("cross_entropy", "goldfish")
    assert split_variant("kd") == ("kd", None)
    assert parse_loss_spec("cross_entropy@talr") == ["cross_entropy"]
    assert Job("lm", "cross_entropy@talr", {}, "", 0, "").variant == "talr"
    assert Job("lm", "kd", {}, "", 0, "").variant is None
    for bad in ("cross_entropy@", "cross_entropy@1x", "@goldfish"):
        with pytest.raises(ValueError, match="loss spec"):
            parse_loss_spec(bad)


def test_warmup_cosine_schedule_against_the_formula():
    """The learning rate of every step: linear warm-up (step + 1) / W for the first W steps,
    times the cosine decay 0.5 (1 + cos(pi step / T)); W = 0 is the cosine alone."""
    from losslab.lab.tasks.lm import warmup_cosine_schedule

    for total, warm in ((20, 5), (7, 0), (4, 10)):
        p = nn.Parameter(torch.zeros(()))
        opt = torch.optim.SGD([p], lr=2.0)
        sched = warmup_cosine_schedule(opt, total, warm)
        for step in range(total + 2):
            w = (step + 1) / warm if step < warm else 1.0
            want = 2.0 * w * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
            assert opt.param_groups[0]["lr"] == pytest.approx(want, abs=1e-12)
            opt.step()
            sched.step()
    with pytest.raises(ValueError, match="warmup_steps"):
        warmup_cosine_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(()))], lr=1.0), 5, -1)
