"""Resolving a run's configuration: task defaults < config file (TOML) < explicit CLI flags.

A config file is flat TOML: one key per option (``losses``, ``seeds``, ``device``, ``threads``
and the task's options), plus optionally ``task = "fewshot"`` (checked), ``out = "runs/x"``
(the default run folder) and a table ``[loss_hparams.<loss>]`` of loss hyperparameters::

    task = "fewshot"
    losses = ["protonet", "proto_triplet", "protonet+icnn"]
    seeds = 3
    shots = [1, 5]

    [loss_hparams.proto_triplet]
    margin = 0.5

``--config NAME`` also accepts the name of a config shipped in ``losslab/lab/configs``
(``demo``, ``miniimagenet_conv4``, ...). Reading TOML needs Python >= 3.11 (``tomllib``) or the
``tomli`` package on 3.10.

Everything that can be checked without training is checked here, before any job
(:func:`check_losses`): the kind of every loss against the task's ``loss_kinds``, and every
``[loss_hparams.<loss>]`` table (a registered loss of the run or of the config file's own
``losses``, only that loss's hyperparameters, values it accepts).
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from losslab.lab.tasks.base import RUNNER_OPTIONS, Task, parse_loss_spec, split_variant

__all__ = ["CONFIG_DIR", "check_losses", "find_config", "fingerprint", "load_config_file",
           "resolve_config"]

CONFIG_DIR = Path(__file__).parent / "configs"
FILE_ONLY_KEYS = ("task", "out", "loss_hparams", "description")


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - python 3.10
        try:
            import tomli as tomllib  # pyright: ignore[reportMissingImports]
        except ImportError:
            raise RuntimeError(
                "reading a config file needs Python >= 3.11 or `pip install tomli`"
            ) from None
    return tomllib.loads(text)


def find_config(name: str | Path) -> Path:
    """A config path, or the name of a shipped config (``demo`` -> ``configs/demo.toml``)."""
    p = Path(name)
    if p.is_file():
        return p
    shipped = CONFIG_DIR / (p.name if p.suffix == ".toml" else p.name + ".toml")
    if shipped.is_file():
        return shipped
    available = sorted(f.stem for f in CONFIG_DIR.glob("*.toml"))
    raise ValueError(f"config file {name} not found (shipped configs: {', '.join(available)})")


def load_config_file(name: str | Path) -> dict[str, Any]:
    path = find_config(name)
    try:
        return _toml_loads(path.read_text())
    except ValueError as e:  # tomllib.TOMLDecodeError is a ValueError
        raise ValueError(f"{path}: invalid TOML: {e}") from None


def _seeds(value: list[int]) -> list[int]:
    # A single number N means seeds 0..N-1; a list means those seeds.
    if len(value) == 1:
        if value[0] < 1:
            raise ValueError(f"seeds: the number of seeds must be >= 1, got {value[0]}")
        return list(range(value[0]))
    if len(set(value)) != len(value):
        raise ValueError(f"seeds: repeated seed in {value}")
    return list(value)


def resolve_config(
    task: Task, file_config: Mapping[str, Any] | None, cli: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Merge task defaults, a config file's values and explicit CLI values (in that order).

    ``cli`` holds only the flags the user gave (raw strings or already-typed values).
    Unknown keys are a ``ValueError`` (a typo must not be silently ignored).
    """
    file_config = dict(file_config or {})
    cli = dict(cli or {})
    opts = {o.name: o for o in (*RUNNER_OPTIONS, *task.options)}
    ftask = file_config.get("task")
    if ftask is not None and ftask != task.name:
        raise ValueError(f"the config file is for task {ftask!r}, not {task.name!r}")
    unknown = sorted(set(file_config) - set(opts) - set(FILE_ONLY_KEYS))
    if unknown:
        raise ValueError(
            f"config file: unknown key(s) {unknown} for task {task.name}; known: {sorted(opts)}"
        )
    unknown = sorted(set(cli) - set(opts))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {task.name}")
    config: dict[str, Any] = {}
    for name, opt in opts.items():
        value = opt.default
        if name in file_config:
            value = file_config[name]
        if name in cli and cli[name] is not None:
            value = cli[name]
        config[name] = opt.parse(value)
    config["seeds"] = _seeds(config["seeds"])
    if not config["losses"]:
        raise ValueError("no losses given: pass --losses a,b,a+b (or set losses in a config)")
    for spec in config["losses"]:
        parse_loss_spec(spec)
    if len(set(config["losses"])) != len(config["losses"]):
        raise ValueError(f"losses: repeated loss in {config['losses']}")
    hp = file_config.get("loss_hparams", {}) or {}
    if not isinstance(hp, Mapping) or not all(isinstance(v, Mapping) for v in hp.values()):
        raise ValueError("loss_hparams must be a table of tables: [loss_hparams.<loss>]")
    config["loss_hparams"] = {k: dict(v) for k, v in hp.items()}
    if config["threads"] < 0:
        raise ValueError(f"threads must be >= 0, got {config['threads']}")
    if config["workers"] < 1:
        raise ValueError(f"workers must be >= 1, got {config['workers']}")
    config["task"] = task.name
    check_losses(task, config, hparam_losses=_file_losses(opts["losses"], file_config))
    return config


def _file_losses(opt: Any, file_config: Mapping[str, Any]) -> set[str]:
    """The registered losses named by the config file's own ``losses`` (a ``--losses`` flag may
    have replaced them for this run; their hyperparameter tables are not typos)."""
    out: set[str] = set()
    try:
        specs = opt.parse(file_config.get("losses", []))
    except ValueError:
        return out
    for s in specs:
        try:
            out.update(parse_loss_spec(s))
        except ValueError:
            continue
    return out


def _close(word: str, choices: Iterable[str]) -> str:
    near = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def check_losses(task: Task, config: Mapping[str, Any], *,
                 hparam_losses: Iterable[str] | None = None) -> None:
    """``ValueError`` for a loss the task cannot train or a loss hyperparameter table that
    cannot be used, before any job runs.

    * every term of every loss spec has a kind in ``task.loss_kinds`` (when the task declares
      them), and the terms of one ``a+b`` spec share one kind;
    * every ``[loss_hparams.<name>]`` names a registered loss that is in the run (or in
      ``hparam_losses``; ``None``: not checked), sets only hyperparameters of that loss, and
      the loss can be built with them (its own validation, e.g. ``temperature > 0``).
    """
    from losslab.registry import available, create
    from losslab.registry import spec as loss_spec

    kinds = task.loss_kinds
    in_run: set[str] = set()
    for s in config["losses"]:
        names = parse_loss_spec(s)
        in_run.update(names)
        variant = split_variant(s)[1]
        if variant is not None and variant not in task.loss_variants:
            known = ", ".join(task.loss_variants) or "none"
            raise ValueError(f"loss {s!r}: the {task.name} task has no variant {variant!r} "
                             f"(its variants: {known})")
        got = {n: loss_spec(n).kind for n in names}
        if kinds is not None:
            for n, k in got.items():
                if k not in kinds:
                    fits = sorted({x for kind in kinds for x in available(kind=kind)})
                    raise ValueError(
                        f"loss {n!r} is of kind {k!r}; the {task.name} task trains "
                        + " or ".join(repr(x) for x in kinds)
                        + f" losses: {', '.join(fits)}"
                    )
        if len(set(got.values())) > 1:
            raise ValueError(
                f"loss {s!r} combines losses of different kinds ("
                + ", ".join(f"{n}: {k}" for n, k in got.items())
                + "); the terms of an 'a+b' loss must share one call signature"
            )
    allowed = None if hparam_losses is None else in_run | set(hparam_losses)
    for name, table in (config.get("loss_hparams") or {}).items():
        where = f"loss_hparams.{name}"
        try:
            s = loss_spec(name)
        except ValueError:
            raise ValueError(
                f"{where}: unknown loss {name!r}{_close(name, sorted(in_run) + available())}; "
                "`losslab list` names the registered losses"
            ) from None
        if allowed is not None and name not in allowed:
            raise ValueError(
                f"{where}: {name!r} is not in this run's losses ({', '.join(sorted(in_run))}),"
                " so these hyperparameters would be silently unused; remove the table or add "
                "the loss"
            )
        unknown = sorted(set(table) - set(s.defaults))
        if unknown:
            raise ValueError(
                f"{where}: unknown hyperparameter {unknown[0]!r}{_close(unknown[0], s.defaults)};"
                f" {name} takes {', '.join(s.defaults)}"
            )
        try:
            create(name, **{**s.example_hparams, **table})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: {e}") from None


def fingerprint(task: Task, config: Mapping[str, Any]) -> dict[str, Any]:
    """The result-affecting part of a config that is shared by all jobs of a run folder.

    Grid options (losses, seeds, the task's grid options) are recorded per job instead, so a
    run folder can be extended with more losses, seeds or settings.
    """
    fp: dict[str, Any] = {"task": task.name, "loss_hparams": config.get("loss_hparams", {})}
    for o in (*RUNNER_OPTIONS, *task.options):
        if o.affects_results and not o.grid:
            fp[o.name] = config[o.name]
    return fp
