"""The task plug-in interface of the lab.

A *task* is one kind of experiment (few-shot classification, noise-robust classification,
metric-learning retrieval, ...). The runner (:mod:`losslab.lab.runner`) and the report
(:mod:`losslab.lab.report`) know nothing about any task: everything task-specific goes through
the :class:`Task` class below. A task module imports the lab's building blocks
(:mod:`~losslab.lab.data`, :mod:`~losslab.lab.backbones`, :mod:`~losslab.lab.training`,
:mod:`~losslab.lab.env`), never the runner or the report. To add a task:

1. Subclass :class:`Task` in ``src/losslab/lab/tasks/<name>.py`` and set the class attributes:

   * ``name`` -- the CLI name (``losslab bench <name>``); ``description`` -- one line.
   * ``options`` -- a tuple of :class:`Option` (the task's settings, with defaults). Each one
     becomes a CLI flag ``--<name-with-dashes>`` and a config-file key ``<name>``. Mark
     options that only change *how fast* a job runs (batch size for evaluation, ...) with
     ``affects_results=False``; mark options that define the grid of settings with
     ``grid=True`` (they are recorded in each job's setting instead of the run fingerprint,
     so a run folder can be extended with new settings).
   * ``metrics`` -- a tuple of :class:`ReportColumn`: which numbers of a job's result the report
     shows, their labels, whether higher is better, whether to plot them; exactly one is
     ``primary`` (the plot's headline metric and the one of the one-line job summary).
   * ``setting_columns`` -- keys of a setting dict shown as columns in ``table.csv``.
   * ``loss_kinds`` -- the loss kinds (:data:`losslab.registry.KINDS`) the task can train,
     e.g. ``("episode",)``; a loss of another kind is refused before any job runs (``None``:
     no check).
   * ``loss_variants`` (optional) -- names of training variants of a loss that the task
     implements itself (the LM task's ``"goldfish"``: the CE on a goldfish-masked target). A
     loss spec may then end in ``@<variant>`` (``cross_entropy@goldfish``): the registered loss
     is built as usual, :attr:`Job.variant` tells ``run_job`` which variant to train, and the
     spec (with its suffix) is the job's loss in tables and paired differences. A variant the
     task does not declare is refused before any job runs.
   * ``line_x`` (optional) -- the key of a *numeric* setting value (e.g. the label-noise
     ``"rate"``): the report then draws each plotted metric as lines over that value (one
     line per loss, t-interval error bars, one panel per combination of the other setting
     values) instead of grouped bars; ``line_x_label`` is its axis label.

2. Implement:

   * ``settings(config) -> list[dict]`` -- the grid of settings (JSON-serialisable dicts, e.g.
     ``{"way": 5, "shot": 1, "train_way": 30}``), one job per (loss, setting, seed).
   * ``setting_label(setting) -> str`` -- short label for tables and the plot's x axis
     (``"5-way 1-shot"``).
   * ``run_job(job, config, progress) -> dict[str, float]`` -- train and evaluate one loss on
     one setting with one seed; return the metrics (at least every ``ReportColumn.key``, plus
     any extra numbers worth keeping, all JSON-serialisable). It is data + model + fit +
     metrics: load (and cache on ``self``) the data, build the model and
     ``job.build_loss(config)``, an optimizer (:func:`losslab.lab.training.build_optimizer`),
     describe the training batches as :class:`losslab.lab.training.Batch` objects and train
     with :func:`losslab.lab.training.fit` (pass ``progress``; ``evaluate=`` for per-epoch
     validation and best-state keeping), then compute the metrics. The runner has already
     seeded python/numpy/torch with ``job.seed`` and set the torch thread count.
   * optionally ``validate(config)`` (fail early with a clear ``ValueError``, e.g. a missing
     dataset folder) and ``title(config)`` (a line for the table and plot titles).

3. Add the class to :data:`losslab.lab.tasks.TASKS`. It must be constructible without
   arguments: worker processes (``workers > 1``) rebuild it from its class.

The ``config`` passed around is a flat ``dict``: the runner's own keys (:data:`RUNNER_OPTIONS`:
``losses``, ``seeds``, ``device``, ``threads``, ``workers``, ``loss_hparams``) plus one key per
task option, resolved as task defaults < config file < explicit CLI flags. :func:`run_bench`
adds ``run_dir``, the run folder, where a task may keep artefacts that every job of the run
shares and a resumed run re-uses (the LM task's teachers); it is not part of the fingerprint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from losslab.lab.progress import Progress

__all__ = [
    "RUNNER_OPTIONS",
    "Job",
    "Option",
    "Progress",
    "ReportColumn",
    "Task",
    "build_loss",
    "parse_loss_spec",
    "split_variant",
]


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


@dataclass(frozen=True)
class Option:
    """One setting of a task (or of the runner).

    Attributes:
        name: config key, snake_case; the CLI flag is ``--`` + name with dashes.
        default: value when neither the config file nor the command line sets it.
        help: one line for ``--help``.
        type: ``int``, ``float``, ``str`` or ``bool`` (of one element when ``multiple``).
        multiple: a list of values (comma-separated on the command line, a TOML array or a
            comma-separated string in a config file).
        choices: allowed values (of each element), or ``None``.
        grid: the option defines the grid of settings (recorded per job, not in the run
            fingerprint).
        affects_results: ``False`` for options that only change speed or display; they are
            left out of the run fingerprint and the job identity.
    """

    name: str
    default: Any
    help: str
    type: type = str
    multiple: bool = False
    choices: tuple[Any, ...] | None = None
    grid: bool = False
    affects_results: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """Convert a CLI string or a config-file value to this option's type (``ValueError``)."""
        if self.multiple:
            if isinstance(value, str):
                items: Sequence[Any] = [v for v in (p.strip() for p in value.split(",")) if v]
            elif isinstance(value, (list, tuple)):
                items = value
            else:
                items = [value]
            return [self._one(v) for v in items]
        return self._one(value)

    def _one(self, value: Any) -> Any:
        try:
            if self.type is bool:
                out: Any = _parse_bool(value)
            elif self.type is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError
                out = int(value)
            elif self.type is float:
                out = float(value)
            else:
                out = str(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"option {self.name}: expected {self.type.__name__}, got {value!r}"
            ) from None
        if self.choices is not None and out not in self.choices:
            raise ValueError(f"option {self.name}: must be one of {self.choices}, got {out!r}")
        return out


#: Options of the runner itself, shared by every task.
RUNNER_OPTIONS: tuple[Option, ...] = (
    Option("losses", [], "losses to compare, comma-separated; '+' combines losses (mean of the "
           "terms), e.g. protonet,protonet+icnn", str, multiple=True, grid=True),
    Option("seeds", [1], "number of seeds N (seeds 0..N-1), or an explicit list '0,5,7'", int,
           multiple=True, grid=True),
    Option("device", "auto", "torch device: auto (cuda if available), cpu, cuda or cuda:N", str,
           affects_results=False),
    Option("threads", 0, "torch CPU threads (0: leave torch's default; with workers > 1: "
           "threads per worker, default 1)", int, affects_results=False),
    Option("workers", 1, "jobs run in parallel, each in its own process (CPU; results are "
           "the same as sequential runs)", int, affects_results=False),
)


@dataclass(frozen=True)
class ReportColumn:
    """A number of a job's result that the report shows (a column of ``table.md``).

    Attributes:
        key: key in the dict returned by :meth:`Task.run_job`.
        label: column header / axis label, with its unit (``"Accuracy (%)"``).
        higher_is_better: decides the bold "best" entry of each setting.
        fmt: format spec of the value (``".2f"``).
        episode_ci: key of a per-job confidence half-width of this metric (e.g. the 95% CI
            over test episodes); the table shows its mean over seeds.
        plot: draw a bar chart of this metric.
        primary: the headline metric (exactly one per task).
    """

    key: str
    label: str
    higher_is_better: bool = True
    fmt: str = ".2f"
    episode_ci: str | None = None
    plot: bool = True
    primary: bool = False


@dataclass(frozen=True)
class Job:
    """One (loss, setting, seed) of a run. ``job_id`` is its identity in ``results.jsonl``."""

    task: str
    loss: str
    setting: Mapping[str, Any]
    setting_label: str
    seed: int
    job_id: str
    index: int = 0
    total: int = 1

    def build_loss(self, config: Mapping[str, Any]) -> nn.Module:
        """The loss module of this job (see :func:`build_loss`)."""
        return build_loss(self.loss, config.get("loss_hparams") or {})

    @property
    def variant(self) -> str | None:
        """The ``@variant`` suffix of the loss spec (``"cross_entropy@goldfish"`` ->
        ``"goldfish"``), or ``None``."""
        return split_variant(self.loss)[1]

    @property
    def loss_names(self) -> list[str]:
        """The registered losses of the job's loss spec (``"a+b"`` -> ``["a", "b"]``)."""
        return parse_loss_spec(self.loss)


def split_variant(spec: str) -> tuple[str, str | None]:
    """``"cross_entropy@goldfish"`` -> ``("cross_entropy", "goldfish")``; no ``@``: ``(spec,
    None)`` (see ``Task.loss_variants``)."""
    base, sep, variant = spec.partition("@")
    if not sep:
        return spec, None
    variant = variant.strip()
    if not variant.isidentifier():
        raise ValueError(f"bad loss spec {spec!r}: expected LOSS@VARIANT with a name after '@'")
    return base, variant


def parse_loss_spec(spec: str) -> list[str]:
    """``"protonet+proto_triplet"`` -> ``["protonet", "proto_triplet"]``, checked against the
    registry (``ValueError`` naming the unknown loss). A ``@variant`` suffix is dropped (see
    :func:`split_variant`)."""
    from losslab.registry import spec as loss_spec

    names = [p.strip() for p in split_variant(spec)[0].split("+")]
    if not spec.strip() or any(not n for n in names):
        raise ValueError(f"bad loss spec {spec!r}: expected names joined by '+'")
    for n in names:
        loss_spec(n)  # raises ValueError listing the available losses
    return names


def build_loss(spec: str, hparams: Mapping[str, Mapping[str, Any]] | None = None) -> nn.Module:
    """Build the loss of a spec string: one registered loss, or ``a+b+...`` combined as the
    SuSana Distancia paper does (the unweighted mean of the terms, :func:`losslab.combine`).

    ``hparams`` maps loss names to keyword hyperparameters (``{"icnn": {"k": 3}}``).
    """
    from losslab.combine import combine
    from losslab.registry import create

    names = parse_loss_spec(spec)
    hp = dict(hparams or {})
    if len(names) == 1:
        return create(names[0], **dict(hp.get(names[0], {})))
    per_term: dict[str, Mapping[str, Any]] = {n: dict(v) for n, v in hp.items() if n in names}
    return combine(names, weights=None, **per_term)  # pyright: ignore[reportArgumentType]


class Task(ABC):
    """Base class of a lab task; see the module docstring."""

    name: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[tuple[Option, ...]]
    metrics: ClassVar[tuple[ReportColumn, ...]]
    setting_columns: ClassVar[tuple[str, ...]] = ()
    loss_kinds: ClassVar[tuple[str, ...] | None] = None
    loss_variants: ClassVar[tuple[str, ...]] = ()
    line_x: ClassVar[str | None] = None
    line_x_label: ClassVar[str | None] = None

    @abstractmethod
    def settings(self, config: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The grid of settings of a run."""

    def setting_label(self, setting: Mapping[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in setting.items())

    @abstractmethod
    def run_job(self, job: Job, config: Mapping[str, Any], progress: Progress) -> dict[str, Any]:
        """Train and evaluate one job; return its metrics."""

    def validate(self, config: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Raise ``ValueError`` for a configuration that cannot run (called before any job)."""

    def title(self, config: Mapping[str, Any]) -> str:
        return self.name

    # -- helpers used by the runner and the report ------------------------------------------

    @classmethod
    def primary_metric(cls) -> ReportColumn:
        prim = [m for m in cls.metrics if m.primary]
        if len(prim) != 1:
            raise TypeError(f"task {cls.name}: exactly one metric must be primary")
        return prim[0]

    @classmethod
    def option(cls, name: str) -> Option:
        for o in (*RUNNER_OPTIONS, *cls.options):
            if o.name == name:
                return o
        raise KeyError(name)

