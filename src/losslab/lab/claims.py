"""Paper claims the lab can test, and their verdicts from run folders: ``losslab report --claims``.

Each :class:`Claim` names the paper, what it claims, the paper's number (as the paper states it,
or "not verified" where the team could not read the tables), and how the lab tests it: the task,
the run folder (its shipped config's ``out``, under a runs root), the settings, the metric, the
losses compared and a decision rule. Every comparison is **paired by seed**: for each seed both
losses ran, ``d = treatment - baseline`` on that seed (the same data, episodes or bags for both),
oriented so that ``d > 0`` is *better* (negated for lower-is-better metrics), then the mean of
``d`` over seeds ± its Student-t 95% half-width (:func:`losslab.lab.stats.mean_t_interval`),
the interval ``[lo, hi]``.

Decision rules (:func:`decide`), with ``m >= 0`` the claim's margin in the metric's units:

* ``"better"`` -- the paper claims the treatment beats the baseline by at least ``m``:
  *reproduced* when ``lo > 0`` and ``hi >= m`` (a real improvement, the claimed size not
  excluded); *not reproduced* when ``hi < m`` (the claimed improvement is excluded: the
  difference is smaller, absent or reversed); *inconclusive* otherwise (the interval holds both
  0 and ``m``).
* ``"not_better"`` -- the paper claims the treatment is *not* better than the baseline by more
  than ``m`` (the metric-learning "reality check"): *reproduced* when ``hi <= m``; *not
  reproduced* when ``lo > m``; *inconclusive* otherwise.
* ``"not_worse"`` -- the paper claims the treatment costs at most ``m`` (goldfish: "little to
  no impact" on perplexity): *reproduced* when ``lo >= -m`` (the whole interval within the
  allowed loss); *not reproduced* when ``hi < -m`` (worse by more than ``m``); *inconclusive*
  otherwise.

Fewer than two paired seeds give no interval: *inconclusive*. A run folder that is missing, of
another task, or without both losses at the setting gives *not run*. :func:`evaluate_claims`
returns one :class:`Verdict` per (claim, setting, treatment); :func:`claims_markdown` renders
``docs/claims.md``. With ``previous=`` (``losslab report --claims --keep-absent``) the rows of
claims whose run folder is absent under the runs root are kept from the previous file, marked
as kept, instead of turning into *not run*: the run folders of one machine need not all exist
on the next.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from losslab.lab.stats import mean_t_interval

if TYPE_CHECKING:
    from losslab.lab.summary import Summary

__all__ = ["CLAIMS", "KEPT", "Claim", "RunFolder", "Verdict", "claims_markdown", "decide",
           "describe_run_folders", "evaluate_claims", "paired_difference", "previous_rows"]

REPRODUCED = "reproduced"
NOT_REPRODUCED = "not reproduced"
INCONCLUSIVE = "inconclusive"
NOT_RUN = "not run"
RULES = ("better", "not_better", "not_worse")


@dataclass(frozen=True)
class Claim:
    """One paper claim and how a run folder tests it.

    ``settings``: setting labels of the task (``task.setting_label``); empty: every setting of
    the run folder. ``treatments``: each is compared with ``baseline`` (one verdict each).
    ``margin``: in the metric's units, ``>= 0``, see :func:`decide`.
    """

    id: str
    paper: str
    claim: str
    paper_number: str
    task: str
    run: str
    metric: str
    baseline: str
    treatments: tuple[str, ...]
    rule: str = "better"
    margin: float = 0.0
    settings: tuple[str, ...] = ()
    command: str = ""
    note: str = ""

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {self.rule!r}")
        if not (self.margin >= 0 and math.isfinite(self.margin)):
            raise ValueError(f"margin must be a finite number >= 0, got {self.margin}")
        if not self.treatments:
            raise ValueError("treatments must name at least one loss")


@dataclass(frozen=True)
class Verdict:
    claim: Claim
    setting: str  # "" when not run
    treatment: str
    verdict: str
    mean: float = math.nan  # oriented paired difference (> 0: treatment better)
    ci: float = math.nan
    n: int = 0
    reason: str = ""


def paired_difference(
    treatment: dict[int, float], baseline: dict[int, float], *, higher_is_better: bool
) -> tuple[float, float, int] | None:
    """``(mean, t half-width, n)`` of ``treatment - baseline`` over the seeds both have, signed
    so that positive is better; ``None`` when they share no seed."""
    common = sorted(set(treatment) & set(baseline))
    if not common:
        return None
    sign = 1.0 if higher_is_better else -1.0
    diffs = [sign * (treatment[s] - baseline[s]) for s in common]
    mean, ci, _, n = mean_t_interval(diffs)
    return mean, ci, n


def decide(mean: float, ci: float, n: int, *, rule: str, margin: float) -> tuple[str, str]:
    """``(verdict, reason)`` of an oriented paired difference ``mean ± ci`` over ``n`` seeds
    (positive: the treatment is better) under ``rule`` with ``margin`` (module docstring)."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if n < 2 or not math.isfinite(ci) or not math.isfinite(mean):
        return INCONCLUSIVE, f"{n} paired seed{'s' if n != 1 else ''}: no interval"
    lo, hi = mean - ci, mean + ci
    iv = f"[{lo:+.2f}, {hi:+.2f}]"
    if rule == "better":
        if lo > 0 and hi >= margin:
            return REPRODUCED, f"interval {iv} above 0" + (
                f" and reaching the claimed {margin:g}" if margin > 0 else "")
        if hi < margin:
            if lo > 0:
                why = f"better, but the interval {iv} excludes the claimed {margin:g}"
            elif hi < 0:
                why = f"worse: the interval {iv} is below 0"
            else:
                why = f"interval {iv} excludes " + (f"the claimed {margin:g}" if margin > 0
                                                     else "any improvement")
            return NOT_REPRODUCED, why
        return INCONCLUSIVE, f"interval {iv} holds 0" + (
            f" and {margin:g}" if margin > 0 else "")
    if rule == "not_worse":
        if lo >= -margin:
            return REPRODUCED, f"interval {iv} at or above -{margin:g}"
        if hi < -margin:
            return NOT_REPRODUCED, f"worse: the interval {iv} is below -{margin:g}"
        return INCONCLUSIVE, f"interval {iv} straddles -{margin:g}"
    if hi <= margin:
        return REPRODUCED, f"interval {iv} at or below the margin {margin:g}"
    if lo > margin:
        return NOT_REPRODUCED, f"interval {iv} above the margin {margin:g}"
    return INCONCLUSIVE, f"interval {iv} straddles the margin {margin:g}"


def _seed_values(
    summary: Summary, setting: str, loss: str, key: str
) -> dict[int, float] | None:
    cell = summary.cells.get((setting, loss, key))
    if cell is None:
        return None
    return dict(zip(cell.seeds, cell.values))


def _evaluate_one(claim: Claim, runs_root: Path) -> list[Verdict]:
    from losslab.lab.summary import summarise

    folder = runs_root / claim.run
    if not (folder / "results.jsonl").exists():
        return [Verdict(claim, "", t, NOT_RUN, reason=f"no {folder}/results.jsonl")
                for t in claim.treatments]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            summary = summarise(folder)
    except (ValueError, RuntimeError, OSError, KeyError) as e:
        return [Verdict(claim, "", t, NOT_RUN, reason=f"{folder}: {e}") for t in claim.treatments]
    if summary.task.name != claim.task:
        return [Verdict(claim, "", t, NOT_RUN,
                        reason=f"{folder} is a {summary.task.name} run, not {claim.task}")
                for t in claim.treatments]
    metric = next((m for m in summary.task.metrics if m.key == claim.metric), None)
    if metric is None:
        raise ValueError(f"claim {claim.id}: task {claim.task} has no metric {claim.metric!r}")
    settings = list(claim.settings) or list(summary.settings)
    out = []
    for setting in settings:
        base = _seed_values(summary, setting, claim.baseline, claim.metric)
        for t in claim.treatments:
            treat = _seed_values(summary, setting, t, claim.metric)
            d = (None if base is None or treat is None else
                 paired_difference(treat, base, higher_is_better=metric.higher_is_better))
            if d is None:
                missing = [x for x, v in ((claim.baseline, base), (t, treat)) if v is None]
                out.append(Verdict(claim, setting, t, NOT_RUN, reason=(
                    f"no {', '.join(missing)} at {setting} in {folder}" if missing
                    else f"no common seed at {setting}")))
                continue
            verdict, reason = decide(*d, rule=claim.rule, margin=claim.margin)
            out.append(Verdict(claim, setting, t, verdict, d[0], d[1], d[2], reason))
    return out


def evaluate_claims(runs_root: str | Path = "runs",
                    claims: Sequence[Claim] | None = None) -> list[Verdict]:
    """One :class:`Verdict` per (claim, setting, treatment), from the run folders under
    ``runs_root`` (``not run`` for a missing folder)."""
    root = Path(runs_root)
    return [v for c in (CLAIMS if claims is None else claims) for v in _evaluate_one(c, root)]


@dataclass(frozen=True)
class RunFolder:
    """What ``docs/claims.md`` says about one run folder the claims read."""

    name: str  # the claims' ``run``, a folder under the runs root
    claims: tuple[str, ...]  # ids of the claims that read it
    status: str  # "read", "absent" or "unreadable"
    title: str = ""  # the task's title of the run (its configuration in words)
    jobs: int = 0
    seeds: tuple[int, ...] = ()
    settings: tuple[str, ...] = ()
    losses: tuple[str, ...] = ()
    note: str = ""


def describe_run_folders(runs_root: str | Path = "runs",
                         claims: Sequence[Claim] | None = None) -> list[RunFolder]:
    """One :class:`RunFolder` per distinct ``run`` of ``claims`` (default :data:`CLAIMS`), in
    the order the claims name them: whether it was found and, if so, what it holds (jobs,
    seeds, settings, losses, the task's title of its configuration)."""
    from losslab.lab.summary import summarise

    root = Path(runs_root)
    order: dict[str, list[str]] = {}
    for c in (CLAIMS if claims is None else claims):
        order.setdefault(c.run, []).append(c.id)
    out = []
    for name, ids in order.items():
        folder = root / name
        ids_t = tuple(dict.fromkeys(ids))
        if not (folder / "results.jsonl").exists():
            out.append(RunFolder(name, ids_t, "absent"))
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                s = summarise(folder)
        except (ValueError, RuntimeError, OSError, KeyError) as e:
            out.append(RunFolder(name, ids_t, "unreadable", note=str(e)))
            continue
        seeds = sorted({sd for cell in s.cells.values() for sd in cell.seeds})
        out.append(RunFolder(name, ids_t, "read", s.title, s.n_rows, tuple(seeds),
                             tuple(s.settings), tuple(s.losses)))
    return out


KEPT = "*(kept from the previous file: run folder absent here)*"
_VERDICT_CELL = re.compile(r"\*\*(reproduced|not reproduced|inconclusive|not run)\*\*")
_FOLDER_ROW = re.compile(r"^\| `(?:[^`]*/)?([^`/]+)` \|")


def previous_rows(text: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    """From a previous ``docs/claims.md``: its verdict-table rows by claim id, and its "Run
    folders" rows by folder name (the last path part)."""
    rows: dict[str, list[str]] = {}
    folder_rows: dict[str, str] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("| Claim |"):
            section = "verdicts"
        elif line.startswith("| Run folder |"):
            section = "folders"
        elif not line.startswith("|"):
            section = ""
        elif line.startswith("|---"):
            continue
        elif section == "verdicts":
            rows.setdefault(line.split("|")[1].strip(), []).append(line)
        elif section == "folders" and (m := _FOLDER_ROW.match(line)):
            folder_rows[m.group(1)] = line
    return rows, folder_rows


def _verdict_of(row: str) -> str:
    """The verdict of a rendered table row (its last cell), *not run* when none is found."""
    cells = row.rstrip().removesuffix("|").rsplit("|", 1)
    m = _VERDICT_CELL.search(cells[-1])
    return m.group(1) if m else NOT_RUN


def _mark_kept(row: str) -> str:
    return row if KEPT in row else row.rstrip().removesuffix("|").rstrip() + f" {KEPT} |"


def _folders_markdown(folders: Sequence[RunFolder], runs_root: str,
                      kept: Mapping[str, str] | None = None) -> list[str]:
    lines = ["## Run folders", "",
             "| Run folder | Claims | What it holds |", "|---|---|---|"]
    for f in folders:
        if f.status == "absent" and kept and f.name in kept:
            lines.append(_mark_kept(kept[f.name]))
            continue
        if f.status == "read":
            seeds = (f"seeds {f.seeds[0]}-{f.seeds[-1]}" if len(f.seeds) > 1 and
                     list(f.seeds) == list(range(f.seeds[0], f.seeds[-1] + 1))
                     else "seeds " + ", ".join(map(str, f.seeds)))
            what = (f"{f.jobs} jobs: {f.title}; {len(f.losses)} losses "
                    f"({', '.join(f'`{x}`' for x in f.losses)}), settings "
                    f"{', '.join(f.settings)}; {seeds}")
        elif f.status == "absent":
            what = "not run (no results.jsonl): its claims' rows say *not run*"
        else:
            what = f"unreadable: {f.note}"
        lines.append(f"| `{runs_root}/{f.name}` | {', '.join(f.claims)} | {what} |")
    return [*lines, ""]


def _fmt_delta(v: Verdict) -> str:
    if v.verdict == NOT_RUN:
        return "—"
    txt = f"{v.mean:+.2f}"
    return txt + (f" ± {v.ci:.2f}" if v.n >= 2 and math.isfinite(v.ci) else "") + f" (n={v.n})"


def claims_markdown(verdicts: Sequence[Verdict], runs_root: str | Path = "runs", *,
                    folders: Sequence[RunFolder] | None = None, command: str = "",
                    previous: str | None = None) -> str:
    """``docs/claims.md``: one table row per verdict, the run folders read (``folders``, from
    :func:`describe_run_folders`; none: the section is left out), then each claim's details.
    ``command``: the command line that generated the file, quoted in the header.

    ``previous``: the text of the file this one replaces. A claim whose verdicts are all *not
    run* because its run folder is absent (per ``folders``) keeps its rows from ``previous``,
    and the folder its row there, each marked as kept (:data:`KEPT`); the summary counts the
    rows as written."""
    kept_rows, kept_folders = previous_rows(previous) if previous else ({}, {})
    # a previous row that says *not run* holds nothing to keep
    kept_rows = {k: rows for k, rows in kept_rows.items()
                 if any(_verdict_of(r) != NOT_RUN for r in rows)}
    kept_folders = {k: r for k, r in kept_folders.items() if "not run (no results" not in r}
    absent = {f.name for f in folders or () if f.status == "absent"}
    body: list[tuple[str, str]] = []  # (verdict, table row)
    done_kept: set[str] = set()
    for v in verdicts:
        c = v.claim
        if v.verdict == NOT_RUN and c.run in absent and c.id in kept_rows:
            if c.id not in done_kept:
                done_kept.add(c.id)
                body += [(_verdict_of(row), _mark_kept(row)) for row in kept_rows[c.id]]
            continue
        rule = c.rule + (f" (m = {c.margin:g})" if c.margin else "")
        verdict = f"**{v.verdict}**" + (f": {v.reason}" if v.reason else "")
        body.append((v.verdict, f"| {c.id} | {c.paper_number} | {v.setting or '—'} | "
                                f"`{v.treatment}` vs `{c.baseline}` | {c.metric}, {rule} | "
                                f"{_fmt_delta(v)} | {verdict} |"))
    counts: dict[str, int] = {}
    for verdict, _ in body:
        counts[verdict] = counts.get(verdict, 0) + 1
    kept_note = (" Rows marked *kept* come from the previous version of this file: their run "
                 "folders were not under the runs root when it was generated "
                 "(`--keep-absent`); \"Run folders\" gives what each held then."
                 if done_kept else "")
    lines = [
        "# Paper claims tested by the lab",
        "",
        f"Generated by `{command or 'losslab report --claims'}` from the run folders under "
        f"`{runs_root}/` (the claim definitions: `src/losslab/lab/claims.py`; the folders "
        "read: \"Run folders\" below). Do not edit by hand; re-run the benchmarks and the "
        "command instead." + kept_note,
        "",
        "Ours: the paired difference treatment − baseline over the seeds both ran, oriented so "
        "that + is better (lower-is-better metrics are negated), mean ± 95% Student-t "
        "half-width, n seeds. Rule `better` (margin m): reproduced when the interval is above "
        "0 and reaches m; not reproduced when it lies below m; inconclusive otherwise. Rule "
        "`not_better` (margin m): reproduced when the interval lies at or below m; not "
        "reproduced when it lies above m. Rule `not_worse` (margin m): reproduced when the "
        "interval lies at or above -m (the treatment costs at most m); not reproduced when it "
        "lies below -m. Our data sets and budgets are small (glyphs, "
        "Fashion-MNIST subsets, minutes of CPU): a verdict is about this setting, not a "
        "verdict on the paper's own experiment.",
        "",
        "Summary: " + ", ".join(f"{k}: {counts[k]}" for k in
                                (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_RUN)
                                if k in counts) + ".",
        "",
        "| Claim | Paper's number | Setting | Treatment vs baseline | Metric, rule "
        "| Ours (Δ ± CI) | Verdict |",
        "|---|---|---|---|---|---:|---|",
        *(row for _, row in body),
    ]
    lines.append("")
    if folders is not None:
        kept_f = {n: r for n, r in kept_folders.items() if n in absent and
                  any(c.run == n for c in (v.claim for v in verdicts) if c.id in done_kept)}
        lines += _folders_markdown(folders, Path(runs_root).as_posix(), kept_f)
    lines += ["## The claims", ""]
    seen: set[str] = set()
    for v in verdicts:
        c = v.claim
        if c.id in seen:
            continue
        seen.add(c.id)
        lines += [f"### {c.id}", "", f"- Paper: {c.paper}", f"- Claim: {c.claim}",
                  f"- Paper's number: {c.paper_number}",
                  f"- Test: task `{c.task}`, run folder `{runs_root}/{c.run}`, metric "
                  f"`{c.metric}`, baseline `{c.baseline}`, "
                  f"settings: {', '.join(c.settings) or 'every setting of the run'}"]
        if c.command:
            lines.append(f"- Produce the run: `{c.command}`")
        if c.note:
            lines.append(f"- Note: {c.note}")
        lines.append("")
    return "\n".join(lines)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="susana-fewshot",
        paper="SuSana Distancia (Mendez-Ruiz et al., arXiv 2305.09062)",
        claim="Training with the Proto-Triplet and ICNN losses improves few-shot accuracy over "
              "metric-based baselines such as ProtoNet by about 2 points.",
        paper_number="+2% accuracy on miniImageNet (abstract; tables not read)",
        task="fewshot", run="demo", metric="test_acc", baseline="protonet",
        treatments=("proto_triplet",), rule="better", margin=2.0,
        command="make demo",
        note="the paper compares with other metric-based methods on miniImageNet; the lab "
             "compares with ProtoNet trained the same way on glyphs, a short budget.",
    ),
    Claim(
        id="icnn-term",
        paper="SuSana Distancia (Mendez-Ruiz et al., arXiv 2305.09062)",
        claim="Adding the ICNN loss term to ProtoNet improves few-shot accuracy.",
        paper_number="not verified (body tables not read)",
        task="fewshot", run="demo", metric="test_acc", baseline="protonet",
        treatments=("protonet+icnn",), rule="better", margin=0.0, command="make demo",
    ),
    Claim(
        id="noise-robust-vs-ce",
        paper="GCE (arXiv 1805.07836), SCE (1908.06112), NCE+RCE (2006.13554), LDR-KL "
              "(2112.14869), comp-sum (2304.07288)",
        claim="Noise-robust losses reach a higher clean test accuracy than cross-entropy when "
              "training labels carry heavy symmetric noise.",
        paper_number="better than CE at 0.8 symmetric noise on CIFAR-10 (numbers not verified "
                     "here)",
        task="noisy", run="noisy_fmnist", metric="test_acc", baseline="cross_entropy",
        treatments=("gce", "sce", "nce_rce", "ldr_kl", "comp_sum"), rule="better", margin=0.0,
        settings=("symmetric 0.8",), command="make bench-noisy",
        note="4 epochs on 4000 Fashion-MNIST images: CE does not reach the memorisation regime "
             "of the papers' 50-120-epoch runs (docs/lab.md).",
    ),
    Claim(
        id="reality-check",
        paper="A Metric Learning Reality Check (Musgrave et al., arXiv 2003.08505)",
        claim="Under one fair protocol, newer metric-learning losses improve on the classic "
              "triplet loss marginally at best.",
        paper_number="\"marginal at best\" (abstract); margin m = 2 MAP@R points is ours",
        task="retrieval", run="retrieval-glyphs", metric="map_at_r", baseline="triplet",
        treatments=("multi_similarity", "circle", "proxy_anchor", "supcon", "arcface"),
        rule="not_better", margin=2.0,
        command="losslab bench retrieval --config retrieval_glyphs",
    ),
    Claim(
        id="aggregate-interpolation",
        paper="Learning from Aggregate Responses (Javanmard et al., arXiv 2401.11081)",
        claim="The interpolated loss (rho in (0, 1)) beats both the bag-level and the "
              "instance-level loss at a suitable bag size.",
        paper_number="an interior optimum of rho (figures; no number verified)",
        task="aggregate", run="aggregate_regression", metric="test_error",
        baseline="bag_level", treatments=("interpolated_aggregate",), rule="better",
        margin=0.0, command="losslab bench aggregate --config aggregate_regression",
        note="the other end is the claim aggregate-interpolation-instance.",
    ),
    Claim(
        id="aggregate-interpolation-instance",
        paper="Learning from Aggregate Responses (Javanmard et al., arXiv 2401.11081)",
        claim="The interpolated loss beats the instance-level loss (the other end of the "
              "interpolation).",
        paper_number="an interior optimum of rho (figures; no number verified)",
        task="aggregate", run="aggregate_regression", metric="test_error",
        baseline="instance_level", treatments=("interpolated_aggregate",), rule="better",
        margin=0.0, command="losslab bench aggregate --config aggregate_regression",
    ),
    Claim(
        id="easyllp-large-bags",
        paper="EasyLLP (Busa-Fekete et al., arXiv 2302.03115)",
        claim="EasyLLP learns from label proportions at least as well as the bag-level "
              "proportion loss, and degrades less as bags grow.",
        paper_number="not verified",
        task="aggregate", run="aggregate_fmnist", metric="test_error", baseline="bag_level",
        treatments=("easyllp",), rule="better", margin=0.0,
        settings=("k=64", "k=64 eps=1"),
        command="losslab bench aggregate --config aggregate_fmnist",
    ),
    Claim(
        id="conr-imbalanced",
        paper="ConR (Keramati et al., arXiv 2309.06651)",
        claim="The ConR contrastive regulariser improves regression on imbalanced targets "
              "(the rare target values).",
        paper_number="lower error on the few-shot target regions (numbers not verified)",
        task="regression", run="regression_tabular", metric="balanced_mae", baseline="mse",
        treatments=("conr",), rule="better", margin=0.0, settings=("hitters 0",),
        command="make bench-regression",
        note="the run has no plain-L1 arm, so ConR's L1 base is not isolated (docs/lab.md).",
    ),
    Claim(
        id="topology-thin-structures",
        paper="clDice (Shit et al., arXiv 2003.07311); Skeleton Recall (Kirchhoff et al., "
              "arXiv 2404.03010); Betti matching (Stucki et al., arXiv 2211.15272)",
        claim="Adding a topology term (clDice, skeleton recall, Betti matching) to a volumetric "
              "loss preserves the topology of thin structures better: fewer spurious or "
              "missing components.",
        paper_number="lower Betti errors on tubular data sets (numbers not verified)",
        task="segmentation", run="segmentation_thin", metric="betti0_error",
        baseline="dice_ce", treatments=("cl_dice+dice_ce", "skeleton_recall+dice_ce",
                                        "betti_matching+dice_ce"),
        rule="better", margin=0.0, settings=("thin",), command="make bench-segmentation-thin",
        note="the compounds are 0.5 topology term + 0.5 Dice-CE (losslab.combine).",
    ),
    Claim(
        id="topology-thin-holes",
        paper="clDice (Shit et al., arXiv 2003.07311); Skeleton Recall (Kirchhoff et al., "
              "arXiv 2404.03010); Betti matching (Stucki et al., arXiv 2211.15272)",
        claim="The same topology terms also get the holes (loops) of thin structures right more "
              "often: a lower Betti-1 error.",
        paper_number="lower Betti-1 errors (numbers not verified)",
        task="segmentation", run="segmentation_thin", metric="betti1_error",
        baseline="dice_ce", treatments=("cl_dice+dice_ce", "skeleton_recall+dice_ce",
                                        "betti_matching+dice_ce"),
        rule="better", margin=0.0, settings=("thin",), command="make bench-segmentation-thin",
    ),
    Claim(
        id="betti-matching-error",
        paper="Topologically faithful image segmentation via induced matching of persistence "
              "barcodes (Stucki et al., arXiv 2211.15272)",
        claim="Training with the Betti matching loss improves the topological performance, "
              "measured by the Betti matching error (features matched at the right place), "
              "while preserving the volumetric performance; the other topology losses are "
              "tested on the same metric.",
        paper_number="improves topological performance across six data sets (abstract; table "
                     "numbers not read)",
        task="segmentation", run="segmentation_thin", metric="betti_matching_error",
        baseline="dice_ce", treatments=("betti_matching+dice_ce", "cl_dice+dice_ce",
                                        "skeleton_recall+dice_ce"),
        rule="better", margin=0.0, settings=("thin",), command="make bench-segmentation-thin",
        note="the error of dims 0 + 1 on the first 30 test images per job (T construction, "
             "8-connected, as the Betti errors); the loss uses the same construction.",
    ),
    Claim(
        id="betti-matching-volumetric",
        paper="Topologically faithful image segmentation via induced matching of persistence "
              "barcodes (Stucki et al., arXiv 2211.15272)",
        claim="... while preserving the volumetric performance: the Dice score of the Betti "
              "matching compound is not worse than Dice-CE's.",
        paper_number="\"preserving the volumetric performance\" (abstract); margin m = 2 Dice "
                     "points is ours",
        task="segmentation", run="segmentation_thin", metric="dice",
        baseline="dice_ce", treatments=("betti_matching+dice_ce",), rule="not_worse",
        margin=2.0, settings=("thin",), command="make bench-segmentation-thin",
    ),
    Claim(
        id="goldfish-memorisation",
        paper="Be like a Goldfish, Don't Memorize! (Hans et al., arXiv 2406.10209)",
        claim="The goldfish loss (k = 4, hashed mask) reduces the verbatim memorisation of text "
              "repeated many times in training, compared with next-token cross-entropy.",
        paper_number="significant reductions in extractable memorisation (abstract; Figure 1: "
                     "100 documents x 100 epochs, numbers not read)",
        task="lm", run="lm_wordnet", metric="memorized", baseline="cross_entropy",
        treatments=("cross_entropy@goldfish",), rule="better", margin=0.0,
        command="make bench-lm",
        note="exact match of the 32 characters after a 32-character prompt (greedy); a "
             "2 x 64 character transformer from scratch, 16 windows each seen 300 times beside "
             "fresh text.",
    ),
    Claim(
        id="goldfish-perplexity",
        paper="Be like a Goldfish, Don't Memorize! (Hans et al., arXiv 2406.10209)",
        claim="... at little or no cost: the goldfish model's validation perplexity is not "
              "worse than cross-entropy's by more than the margin.",
        paper_number="\"little to no impact on downstream benchmarks\" (abstract); margin "
                     "m = 1 perplexity point is ours",
        task="lm", run="lm_wordnet", metric="val_ppl", baseline="cross_entropy",
        treatments=("cross_entropy@goldfish",), rule="not_worse", margin=1.0,
        command="make bench-lm",
    ),
    Claim(
        id="distillation-stronger-teacher",
        paper="KD (Hinton et al., arXiv 1503.02531); DKD (arXiv 2203.08679); generalised JSD "
              "(arXiv 2306.13649); Sinkhorn KD (arXiv 2402.17110)",
        claim="A student trained with cross-entropy plus distillation from a stronger teacher "
              "reaches a lower validation perplexity than the same student with "
              "cross-entropy alone.",
        paper_number="not verified (the papers' settings differ: image classifiers, "
                     "pretrained LMs)",
        task="lm", run="lm_wordnet", metric="val_ppl", baseline="cross_entropy",
        treatments=("kd", "dkd", "jsd", "sinkhorn_kd"), rule="better", margin=0.0,
        command="make bench-lm",
        note="the teacher (3 x 80, 2.2x the student's parameters) is trained with plain CE "
             "on the same batches for twice the students' epochs; its validation perplexity "
             "is in the students' rows (teacher_val_ppl).",
    ),
    Claim(
        id="loss-reweighting-perplexity",
        paper="Dynamic Loss-Based Sample Reweighting for Improved Large Language Model "
              "Pretraining (Sow et al., arXiv 2502.06733)",
        claim="Loss-based sample reweighting (LinUpper) improves the pretrained model over "
              "uniform weights.",
        paper_number="not verified",
        task="lm", run="lm_wordnet", metric="val_ppl", baseline="cross_entropy",
        treatments=("cross_entropy@reweight",), rule="better", margin=0.0,
        command="make bench-lm",
        note="per-sequence weights of the detached mean CE of each window, as token_weight=.",
    ),
    Claim(
        id="robust-regression-outliers",
        paper="A General and Adaptive Robust Loss Function (Barron, arXiv 1701.03077)",
        claim="The adaptive robust loss is more robust to gross outliers than the squared loss.",
        paper_number="not verified",
        task="regression", run="regression_tabular", metric="test_mae", baseline="mse",
        treatments=("barron", "cauchy"), rule="better", margin=0.0,
        settings=("cps1985 0.2", "hitters 0.2"), command="make bench-regression",
        note="barron with adaptive alpha and scale, cauchy (alpha = 0 of the same family).",
    ),
)
