"""Experiment tracking: ``--track mlflow[:URI]`` and ``--track tensorboard[:DIR]``.

A tracker logs each row the runner records in ``results.jsonl`` (the record; the tracker is a
view of it), on the driver, right after the row is written:

* **MLflow** -- one MLflow run per job in the experiment ``losslab-<task>``, named
  ``loss | setting | seed N`` and tagged ``loss``, ``setting`` (its label; ``setting_json`` the
  dict), ``seed``, ``fingerprint`` (a short hash of the run fingerprint; the fingerprint itself is
  the tag ``fingerprint_json``), ``job_id``, ``task``, ``run_folder`` and, for a diverged job,
  ``diverged``. The resolved configuration is the run's params (lists and tables as JSON, plus
  ``setting.<key>`` per setting value); the per-epoch curves (``train_loss``, ``val_score``,
  ``term/<loss>`` of a combined loss) are metrics with ``step`` = epoch; the final metrics (and
  ``seconds``) are metrics at the last epoch (named ``final/<key>`` if a curve has that name).
  The default store is a local file store under the run folder (``RUN/mlruns``; view it with
  ``mlflow ui --backend-store-uri RUN/mlruns``); ``mlflow:URI`` picks any tracking URI
  (``http://host:5000``, ``sqlite:///path/mlflow.db``, ``file:///path``). MLflow keeps its
  file store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``; for a
  file store URI the tracker sets that variable in this process (only if it is unset).
* **TensorBoard** -- one event-file folder per job under ``RUN/tensorboard`` (or ``DIR``):
  ``<loss>/<setting>/seed<N>-<job_id>``, with the curves as scalars (step = epoch), the final
  metrics as ``final/<key>`` scalars at the last epoch, the configuration as text, and the
  job's hyperparameters and final metrics in the HParams dashboard
  (``tensorboard --logdir RUN/tensorboard``).

Resume and faults: a tracker knows which jobs it has logged (MLflow: the ``job_id`` tags of the
runs with this fingerprint; TensorBoard: a ``.complete`` marker written after the event file is
closed), and on every invocation it first logs the recorded rows it is missing, so each job of
``results.jsonl`` is logged exactly once even when a run was killed between the row and its
log. A tracker that cannot be opened (a bad URI, a missing package) stops the run before any
job; a failure while logging a row is a warning line and the run goes on (the next invocation
logs that row). MLflow and TensorBoard are the ``losslab[track]`` extra.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Protocol

from losslab.lab.tasks.base import Task

__all__ = ["TRACKERS", "MLflowTracker", "ManyTrackers", "TensorBoardTracker", "Tracker",
           "fingerprint_id", "make_tracker", "many_trackers"]

#: ``--track`` values (each optionally ``:URI`` / ``:DIR``)
TRACKERS = ("mlflow", "tensorboard")


class Tracker(Protocol):
    """Logs the recorded rows of a run (see the module docstring)."""

    name: ClassVar[str]

    def describe(self) -> dict[str, Any]:
        """What ``env.json`` records about the tracker."""
        ...

    def open(self, folder: Path, task: Task, config: Mapping[str, Any],
             fingerprint: Mapping[str, Any]) -> None:
        """Connect (before any job: errors here stop the run)."""
        ...

    def sync(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Log the rows not logged yet; return how many were logged now."""
        ...

    def log(self, row: Mapping[str, Any]) -> None:
        """Log one recorded row (a job not logged yet)."""
        ...

    def close(self) -> None: ...


def fingerprint_id(fingerprint: Mapping[str, Any]) -> str:
    """A short stable hash of a run fingerprint (the MLflow ``fingerprint`` tag)."""
    blob = json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def make_tracker(spec: str) -> Tracker:
    """``mlflow``, ``mlflow:URI``, ``tensorboard`` or ``tensorboard:DIR`` (``ValueError``)."""
    name, _, arg = spec.partition(":")
    if name == "mlflow":
        return MLflowTracker(uri=arg or None)
    if name == "tensorboard":
        return TensorBoardTracker(logdir=arg or None)
    raise ValueError(f"--track must be mlflow[:URI] or tensorboard[:DIR], got {spec!r}")


def _numbers(values: Mapping[str, Any]) -> dict[str, float]:
    """The numeric entries (bools excluded) as floats; NaN stays NaN (a diverged job)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _final_metrics(row: Mapping[str, Any]) -> tuple[dict[str, float], int]:
    """The row's final metrics (plus ``seconds``), renamed ``final/<key>`` where a curve has the
    same name, and the step they are logged at (the last epoch, 0 without curves)."""
    curves: Mapping[str, list[float]] = row.get("curves") or {}
    final = _numbers(row.get("metrics") or {})
    if isinstance(row.get("seconds"), (int, float)):
        final["seconds"] = float(row["seconds"])
    final = {(f"final/{k}" if k in curves else k): v for k, v in final.items()}
    last = max((len(v) for v in curves.values()), default=0)
    return final, last


def _param_value(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return s[:6000]  # MLflow's limit on a param value


def _run_params(config: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, str]:
    params = {k: _param_value(v) for k, v in config.items()}
    for k, v in dict(row.get("setting") or {}).items():
        params[f"setting.{k}"] = _param_value(v)
    params["loss"] = str(row["loss"])
    params["seed"] = str(row["seed"])
    return params


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or ("://" not in uri and not uri.startswith(
        ("databricks", "sqlite", "postgresql", "mysql", "mssql", "http")))


class MLflowTracker:
    """One MLflow run per job (see the module docstring)."""

    name: ClassVar[str] = "mlflow"

    def __init__(self, uri: str | None = None, experiment: str | None = None) -> None:
        self.uri = uri
        self.experiment = experiment
        self._client: Any = None
        self._experiment_id = ""
        self._logged: set[str] = set()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "uri": self.uri or "RUN/mlruns (file store)",
                "experiment": self.experiment}

    def open(self, folder: Path, task: Task, config: Mapping[str, Any],
             fingerprint: Mapping[str, Any]) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ValueError("--track mlflow needs MLflow: pip install 'losslab[track]' (or "
                             "mlflow)") from None
        self.folder = folder
        self.config = dict(config)
        self.task_name = task.name
        self.fp = dict(fingerprint)
        self.fp_id = fingerprint_id(fingerprint)
        uri = self.uri or (folder / "mlruns").resolve().as_uri()
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.resolved_uri = uri
        try:
            client = MlflowClient(tracking_uri=uri)
            name = self.experiment or f"losslab-{task.name}"
            exp = client.get_experiment_by_name(name)
            self._experiment_id = (exp.experiment_id if exp is not None
                                   else client.create_experiment(name))
            self._logged = self._logged_job_ids(client)
        except Exception as e:
            raise ValueError(f"--track mlflow: cannot use the tracking URI {uri}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                             ) from None
        self._client = client

    def _logged_job_ids(self, client: Any) -> set[str]:
        out: set[str] = set()
        token = None
        while True:
            page = client.search_runs(
                [self._experiment_id], filter_string=f"tags.fingerprint = '{self.fp_id}'",
                max_results=1000, page_token=token)
            out |= {r.data.tags["job_id"] for r in page if "job_id" in r.data.tags}
            token = page.token
            if not token:
                return out

    def sync(self, rows: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for row in rows:
            if row["job_id"] not in self._logged:
                self.log(row)
                n += 1
        return n

    def log(self, row: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self._client is None:
            raise RuntimeError("MLflowTracker.log before open")
        if row["job_id"] in self._logged:
            return
        client = self._client
        tags = {
            "loss": str(row["loss"]),
            "setting": str(row.get("setting_label", "")),
            "setting_json": json.dumps(row.get("setting", {}), sort_keys=True),
            "seed": str(row["seed"]),
            "fingerprint": self.fp_id,
            "fingerprint_json": json.dumps(self.fp, sort_keys=True, default=str)[:5000],
            "job_id": str(row["job_id"]),
            "task": self.task_name,
            "run_folder": str(self.folder.resolve()),
        }
        if row.get("diverged"):
            tags["diverged"] = str(row["diverged"])[:5000]
        run = client.create_run(
            self._experiment_id, tags=tags,
            run_name=f"{row['loss']} | {row.get('setting_label', '')} | seed {row['seed']}")
        run_id = run.info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, i + 1)
                   for k, vs in (row.get("curves") or {}).items() for i, v in enumerate(vs)]
        final, last = _final_metrics(row)
        metrics += [Metric(k, v, now, last) for k, v in final.items()]
        params = [Param(k, v) for k, v in _run_params(self.config, row).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limits: 100 params, 1000 metrics
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.log_batch(run_id, tags=[RunTag("mlflow.note.content",
                                              f"losslab job {row['job_id']}")])
        client.set_terminated(run_id, status="FINISHED")
        self._logged.add(row["job_id"])

    def close(self) -> None:
        self._client = None


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def _safe(part: str) -> str:
    return _UNSAFE.sub("_", part).strip("_") or "_"


class TensorBoardTracker:
    """One TensorBoard event-file folder per job (see the module docstring)."""

    name: ClassVar[str] = "tensorboard"
    MARKER: ClassVar[str] = ".complete"

    def __init__(self, logdir: str | os.PathLike[str] | None = None) -> None:
        self.logdir = Path(logdir) if logdir is not None else None
        self.root = Path()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "logdir": str(self.logdir or "RUN/tensorboard")}

    def open(self, folder: Path, task: Task, config: Mapping[str, Any],
             fingerprint: Mapping[str, Any]) -> None:
        try:
            import tensorboard  # noqa: F401  (SummaryWriter needs it)
            from torch.utils.tensorboard import SummaryWriter  # noqa: F401
        except ImportError:
            raise ValueError("--track tensorboard needs TensorBoard: pip install "
                             "'losslab[track]' (or tensorboard)") from None
        self.root = self.logdir if self.logdir is not None else folder / "tensorboard"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--track tensorboard: cannot create {self.root}: {e}") from None
        self.config = dict(config)
        self.fp_id = fingerprint_id(fingerprint)

    def job_dir(self, row: Mapping[str, Any]) -> Path:
        """``<loss>/<setting>/seed<N>-<job_id>`` under the log folder."""
        return (self.root / _safe(str(row["loss"])) / _safe(str(row.get("setting_label", "")))
                / f"seed{row['seed']}-{row['job_id']}")

    def logged(self, row: Mapping[str, Any]) -> bool:
        return (self.job_dir(row) / self.MARKER).exists()

    def sync(self, rows: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for row in rows:
            if not self.logged(row):
                self.log(row)
                n += 1
        return n

    def log(self, row: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        d = self.job_dir(row)
        if (d / self.MARKER).exists():
            return
        if d.exists():  # a log cut short (killed mid-write): start it again
            shutil.rmtree(d)
        d.mkdir(parents=True)
        writer = SummaryWriter(log_dir=str(d))
        try:
            for k, vs in (row.get("curves") or {}).items():
                for i, v in enumerate(vs):
                    writer.add_scalar(k, v, i + 1)
            final, last = _final_metrics(row)
            for k, v in final.items():
                writer.add_scalar(k if k.startswith("final/") else f"final/{k}", v, last)
            writer.add_text("config", "```\n" + json.dumps(self.config, indent=2,
                                                            sort_keys=True, default=str)
                            + "\n```")
            job = {"loss": row["loss"], "setting": row.get("setting_label", ""),
                   "seed": row["seed"], "job_id": row["job_id"], "fingerprint": self.fp_id}
            if row.get("diverged"):
                job["diverged"] = row["diverged"]
            writer.add_text("job", json.dumps(job, sort_keys=True))
            hp: dict[str, Any] = {"loss": str(row["loss"]), "seed": int(row["seed"]),
                                  "setting": str(row.get("setting_label", ""))}
            for k, v in dict(row.get("setting") or {}).items():
                hp[f"setting.{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
            hmetrics = {f"hparam/{k.removeprefix('final/')}": v for k, v in final.items()
                        if math.isfinite(v)}
            for summary in hparams(hp, hmetrics):
                writer.file_writer.add_summary(summary)  # pyright: ignore[reportOptionalMemberAccess]
            for k, v in hmetrics.items():
                writer.add_scalar(k, v, last)
        finally:
            writer.close()
        (d / self.MARKER).write_text(str(row["job_id"]) + "\n")

    def close(self) -> None:
        pass


class ManyTrackers:
    """Several trackers as one (``--track mlflow --track tensorboard``)."""

    name: ClassVar[str] = "trackers"

    def __init__(self, trackers: Iterable[Tracker]) -> None:
        self.trackers = list(trackers)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "trackers": [t.describe() for t in self.trackers]}

    def open(self, folder: Path, task: Task, config: Mapping[str, Any],
             fingerprint: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.open(folder, task, config, fingerprint)

    def sync(self, rows: Iterable[Mapping[str, Any]]) -> int:
        rows = list(rows)
        return sum(t.sync(rows) for t in self.trackers)

    def log(self, row: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log(row)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def many_trackers(trackers: Iterable[Tracker]) -> Tracker:
    """One tracker of several (the one itself when there is one)."""
    trackers = list(trackers)
    return trackers[0] if len(trackers) == 1 else ManyTrackers(trackers)
