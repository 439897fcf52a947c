"""The task-agnostic runner: one job per (loss, setting, seed), resumable.

A run folder (``--out``) holds:

* ``config.json`` -- the resolved configuration of the latest invocation and its
  ``fingerprint`` (the result-affecting options shared by all jobs);
* ``env.json`` -- git SHA, python/torch/numpy/losslab versions, platform, CPU count, device
  (of the latest invocation; each result row also records its device and git SHA);
* ``results.jsonl`` -- one line per finished job (:mod:`losslab.lab.results`);
* ``table.md``, ``table.csv``, ``<metric>.png`` -- the report, regenerated from the JSONL.

Resume: re-running the same command skips every job whose ``job_id`` is already in
``results.jsonl``; a job killed mid-way left no line and runs again. Nothing else is kept
between jobs: the best checkpoint of a job lives in memory only, so a killed job can never be
mistaken for a finished one. Re-running with a *different* result-affecting configuration in
the same folder is refused (use a new ``--out``); more losses, seeds or settings may be added
to an existing folder. A lock file prevents two runs from writing one folder at once.

Faults. Everything that can be checked without training is checked before the first job: the
configuration (loss kinds, loss hyperparameters, device, workers), the task's own
``validate``, and the run folder (created, locked, ``config.json``/``env.json`` written and
``results.jsonl`` opened for appending: a read-only folder or results file is a
:class:`RunFolderError` before any training, not a lost result after the first job). A job
whose training loss becomes non-finite (:func:`losslab.lab.training.fit` raises
``FloatingPointError``) is recorded as *diverged* (NaN metrics and the message under
``diverged``) and the run goes on; the report counts and marks it. A full disk while a result
is appended leaves the file as it was (no half row) and stops the run with a message. Ctrl-C
stops the run with :class:`BenchInterrupted` (how many jobs are done; re-running resumes).

Where jobs run is the *executor*'s business (:mod:`losslab.lab.executors`): ``local`` (the
default: in this process, or ``workers > 1`` spawned processes that die with the runner, see
:mod:`losslab.lab.executors.local`), ``ray`` (Ray tasks, local or remote cluster) or
``slurm`` (submitit). Every executor streams results back; this process alone writes
``results.jsonl``, so resume, the fingerprint check and the lock are the same for all. An
optional *tracker* (:mod:`losslab.lab.tracking`: MLflow, TensorBoard) logs each recorded row.

The runner knows a task only through the :class:`~losslab.lab.tasks.base.Task` object it is
given (it never looks a task up by name): worker processes rebuild it from its class.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from losslab.lab.config import check_losses, fingerprint
from losslab.lab.env import environment, resolve_device
from losslab.lab.executors import Executor, LocalExecutor
from losslab.lab.executors.base import JobResult
from losslab.lab.executors.base import label as _label
from losslab.lab.progress import Progress, TqdmProgress
from losslab.lab.report import write_report
from losslab.lab.results import (
    ResultsWriter,
    RunFolderError,
    job_id,
    read_rows,
    read_run_config,
)
from losslab.lab.tasks.base import Job, Task
from losslab.lab.tracking import Tracker

__all__ = ["BenchInterrupted", "ConfigMismatchError", "RunFolderError", "plan_jobs",
           "run_bench"]


class ConfigMismatchError(RuntimeError):
    """The run folder holds results of a different configuration."""


class BenchInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a run. The finished jobs are recorded; re-running the same
    command resumes. ``done`` of ``total`` jobs of the run are in ``results.jsonl``, ``ran`` of
    them by this invocation."""

    def __init__(self, folder: Path, done: int, total: int, ran: int) -> None:
        self.folder, self.done, self.total, self.ran = folder, done, total, ran
        super().__init__(
            f"interrupted: {done} of {total} jobs done in {folder}; re-run the same command "
            "to resume"
        )


_HINTS = {
    errno.EACCES: "read-only?",
    errno.EPERM: "read-only?",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "disk full",
    errno.EFBIG: "file size limit (ulimit -f) or disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EEXIST: "a file where a folder is expected",
    errno.ENOTDIR: "a file where a folder is expected",
    errno.EISDIR: "a folder where a file is expected",
}


def _why(e: OSError) -> str:
    hint = _HINTS.get(e.errno or 0)
    return f"{e}" + (f" ({hint})" if hint else "")


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def plan_jobs(task: Task, config: Mapping[str, Any]) -> list[Job]:
    """All jobs of a config, seed-major (all losses and settings of seed 0 first, so that an
    interrupted run still holds complete comparisons for its first seeds)."""
    fp = fingerprint(task, config)
    settings = task.settings(config)
    jobs: list[Job] = []
    for seed in config["seeds"]:
        for setting in settings:
            for loss in config["losses"]:
                jobs.append(
                    Job(task=task.name, loss=loss, setting=dict(setting),
                        setting_label=task.setting_label(setting), seed=int(seed),
                        job_id=job_id(task.name, loss, setting, seed, fp))
                )
    total = len(jobs)
    return [
        Job(j.task, j.loss, j.setting, j.setting_label, j.seed, j.job_id, i + 1, total)
        for i, j in enumerate(jobs)
    ]


@contextlib.contextmanager
def _lock(folder: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - windows: no lock
        yield
        return
    try:
        fd = os.open(folder / ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as e:
        raise RunFolderError(f"cannot write the run folder {folder}: {_why(e)}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"another `losslab bench` is writing {folder} (lock held); wait for it or use "
                "another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def _check_folder(folder: Path, fp: Mapping[str, Any]) -> None:
    cfg = read_run_config(folder)  # RunFolderError when malformed
    if not cfg:
        return
    old = cfg.get("fingerprint", {})
    if old != dict(fp):
        keys = sorted(set(old) | set(fp))
        diff = [f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in keys if old.get(k) != fp.get(k)]
        raise ConfigMismatchError(
            f"run folder {folder} holds results of a different configuration ("
            + "; ".join(diff)
            + "). Use a new --out for the new configuration (or delete the folder to start "
            "over); only losses, seeds and grid settings may change within one folder."
        )


def _summary(res: JobResult, task: Task) -> str:
    parts = []
    for m in task.metrics:
        v = res.metrics.get(m.key)
        if not isinstance(v, (int, float)) or res.diverged:
            continue
        s = f"{m.key} {v:{m.fmt}}"
        if m.episode_ci and isinstance(res.metrics.get(m.episode_ci), (int, float)):
            s += f" ± {res.metrics[m.episode_ci]:{m.fmt}}"
        parts.append(s)
    if res.diverged:
        parts.append(f"diverged: {res.diverged}")
    return f"{_label(res.job)} | {' | '.join(parts)} | {res.seconds:.1f} s"


# -- the run ----------------------------------------------------------------------------


def _row(task: Task, res: JobResult, device: torch.device, env: Mapping[str, Any]
         ) -> dict[str, Any]:
    job = res.job
    row = {
        "job_id": job.job_id,
        "task": task.name,
        "loss": job.loss,
        "setting": dict(job.setting),
        "setting_label": job.setting_label,
        "seed": job.seed,
        "metrics": res.metrics,
        "seconds": round(res.seconds, 3),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": res.device or str(device),
        "git_sha": env["git_sha"],
    }
    if res.curves:
        row["curves"] = res.curves
    if res.diverged:
        row["diverged"] = res.diverged
    return row


def _driver_device(config: Mapping[str, Any], executor: Executor) -> tuple[torch.device, str]:
    """The device checked on this machine (local executor), or, for a remote executor whose
    jobs resolve ``device`` where they run, this machine's view of it when it has one."""
    if not executor.remote:
        dev = resolve_device(config["device"])
        return dev, str(dev)
    try:
        dev = resolve_device(config["device"])
    except ValueError:  # e.g. cuda requested, the driver has none: the workers decide
        return torch.device("cpu"), f"{config['device']} (resolved on the {executor.name} workers)"
    return dev, f"{dev} (resolved on the {executor.name} workers)"


def _track(tracker: Tracker | None, progress: Progress, what: str, fn: Any, *args: Any) -> None:
    """A tracker call after the run started: a failure is a warning line, never a lost run
    (results.jsonl is the record; the next invocation logs the rows the tracker missed)."""
    if tracker is None:
        return
    try:
        fn(*args)
    except Exception as e:
        progress.log(f"warning: {tracker.name} tracking: could not {what}: "
                     f"{type(e).__name__}: {e}; re-running the command logs it")


def run_bench(
    task: Task,
    config: Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    quiet: bool = False,
    report: bool = True,
    executor: Executor | None = None,
    tracker: Tracker | None = None,
) -> Path:
    """Run (or resume) every job of ``config`` into the folder ``out``; return the folder.

    ``quiet`` hides progress bars (the one-line summaries stay); ``report`` writes
    ``table.md``/``table.csv``/plots at the end. ``executor`` says where the jobs run
    (:mod:`losslab.lab.executors`; default: :class:`~losslab.lab.executors.LocalExecutor`
    with the config's ``workers``); whatever it is, this process alone writes the results.
    ``tracker`` (:mod:`losslab.lab.tracking`) also logs every recorded row, including rows
    recorded earlier that it has not logged yet. Raises ``ValueError`` (configuration),
    :class:`ConfigMismatchError`, :class:`RunFolderError` (the folder cannot be used, or a
    result could not be recorded), :class:`~losslab.lab.results.CorruptResultsError`, and
    :class:`BenchInterrupted` on Ctrl-C; all of them before any job, except the last two
    kinds of :class:`RunFolderError` and Ctrl-C.
    """
    folder = Path(out)
    config = dict(config)
    config["run_dir"] = str(folder)  # tasks may keep run-level artefacts there (LM teachers)
    fp = fingerprint(task, config)
    executor = executor if executor is not None else LocalExecutor()
    executor.check(config)
    device, device_note = _driver_device(config, executor)
    check_losses(task, config)
    task.validate(config)
    if config.get("threads", 0) > 0:
        torch.set_num_threads(int(config["threads"]))
    progress = TqdmProgress(enabled=not quiet)
    if executor.name != "local" and int(config.get("workers", 1)) > 1:
        progress.log(f"workers={config['workers']} is the local executor's; the {executor.name} "
                     "executor runs as many jobs at once as its resources allow")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {folder}: {_why(e)}") from None
    with _lock(folder):
        _check_folder(folder, fp)
        results = folder / "results.jsonl"
        try:
            _write_json(folder / "config.json", {**config, "fingerprint": fp})
            env = environment(device)
            env["device"] = device_note
            env["executor"] = executor.describe()
            if tracker is not None:
                env["tracking"] = tracker.describe()
            _write_json(folder / "env.json", env)
            done_rows = read_rows(results)
            done = {r["job_id"] for r in done_rows}
            writer = ResultsWriter(results)  # before any job: can its results be recorded?
        except OSError as e:
            raise RunFolderError(f"cannot write the run folder {folder}: {_why(e)}") from None
        if tracker is not None:
            tracker.open(folder, task, config, fp)  # a bad URI fails here, before any job
        try:
            with writer:
                jobs = plan_jobs(task, config)
                todo = [j for j in jobs if j.job_id not in done]
                progress.log(
                    f"{task.name}: {len(jobs)} jobs ({len(jobs) - len(todo)} already done) -> "
                    f"{folder}"
                )
                if tracker is not None:
                    _track(tracker, progress, "log the recorded rows", tracker.sync, done_rows)
                ran = 0
                try:
                    it = executor.run(task, config, todo, progress, folder)
                    try:
                        for res in it:
                            row = _row(task, res, device, env)
                            try:
                                writer.append(row)
                            except OSError as e:
                                raise RunFolderError(
                                    f"could not record the result of job {_label(res.job)} "
                                    f"in {results}: {_why(e)}; "
                                    f"{len(jobs) - len(todo) + ran} of {len(jobs)} jobs done "
                                    "and recorded; make room (or fix the folder) and re-run "
                                    "the same command to resume"
                                ) from None
                            ran += 1
                            progress.log(_summary(res, task))
                            if tracker is not None:
                                _track(tracker, progress, f"log job {_label(res.job)}",
                                       tracker.log, row)
                    finally:
                        close = getattr(it, "close", None)  # stop the jobs in flight
                        if close is not None:
                            close()
                except KeyboardInterrupt:
                    raise BenchInterrupted(folder, len(jobs) - len(todo) + ran, len(jobs),
                                           ran) from None
        finally:
            if tracker is not None:
                _track(tracker, progress, "close", tracker.close)
    if report:
        write_report(folder, task=task)
    return folder
