"""``losslab bench TASK ...`` and ``losslab report DIR``.

The top-level ``losslab`` CLI (``losslab.cli``) calls :func:`add_bench_parser` and
:func:`add_report_parser` on its subparsers; each sets ``func`` (``args.func(args) -> int``).
``python -m losslab.lab.cli bench ...`` works on its own too.

Option precedence: task defaults < ``--config FILE`` (TOML; or a shipped config name such as
``demo``) < explicit flags.

Every expected failure is one line on stderr, ``losslab bench: error: ...`` (exit status 2): a
bad option or config, a loss the task cannot train, a run folder that cannot be used
(read-only, full disk, a file where a folder is expected, a malformed ``config.json``), a
corrupt results file. Ctrl-C prints ``losslab bench: interrupted: N of M jobs done ...; re-run
the same command to resume`` (exit status 130). Warnings (a truncated or duplicated result
row) are one line each, ``losslab report: warning: ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parser", "add_report_parser", "bench_main", "claims_main", "main",
           "report_main"]


def _add_option(p: argparse.ArgumentParser, opt: Any) -> None:
    default = ",".join(map(str, opt.default)) if opt.multiple else opt.default
    help_ = f"{opt.help} (default: {default})"
    if opt.type is bool and not opt.multiple:
        p.add_argument(opt.flag, dest=opt.name, action=argparse.BooleanOptionalAction,
                       default=argparse.SUPPRESS, help=help_)
    else:
        metavar = "A,B,..." if opt.multiple else opt.name.upper()
        if opt.choices and not opt.multiple:
            metavar = "{" + ",".join(map(str, opt.choices)) + "}"
        p.add_argument(opt.flag, dest=opt.name, default=argparse.SUPPRESS, metavar=metavar,
                       help=help_)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` (with one sub-command per task) to an argparse ``subparsers``."""
    from losslab.lab.tasks import available_tasks, get_task
    from losslab.lab.tasks.base import RUNNER_OPTIONS

    bench = subparsers.add_parser(
        "bench", help="train and evaluate losses on real data (resumable run folder)",
        description="Compare losses: one job per (loss, setting, seed), results appended to "
        "OUT/results.jsonl; re-running the same command resumes.",
    )
    tasks = bench.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in available_tasks():
        task = get_task(name)
        p = tasks.add_parser(name, help=task.description, description=task.description)
        p.add_argument("--config", default=None, metavar="FILE",
                       help="TOML config file or shipped config name (explicit flags win)")
        p.add_argument("--out", default=None, metavar="DIR",
                       help="run folder (default: the config's out, else runs/TASK-DATASET)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument("--no-report", action="store_true",
                       help="do not write table/plots at the end")
        g = p.add_argument_group("runner")
        for opt in RUNNER_OPTIONS:
            _add_option(g, opt)
        _add_executor_options(p)
        g = p.add_argument_group(f"{name} task")
        for opt in task.options:
            _add_option(g, opt)
        p.set_defaults(func=bench_main)
    return bench


def _add_executor_options(p: argparse.ArgumentParser) -> None:
    """Where jobs run and what else records them (they change no result: not in the
    fingerprint, not in config.json)."""
    g = p.add_argument_group("executor and tracking")
    g.add_argument("--executor", choices=("local", "ray", "slurm"), default="local",
                   help="where jobs run: local (this machine, --workers processes), ray (Ray "
                   "tasks; pip install losslab[ray]) or slurm (submitit; losslab[slurm]) "
                   "(default: local)")
    g.add_argument("--address", default=None, metavar="ADDR",
                   help="ray: the cluster to join (auto, HOST:6379, ray://HOST:10001; "
                   "default: start a local one, or RAY_ADDRESS)")
    g.add_argument("--cpus-per-job", type=float, default=1.0, metavar="N",
                   help="ray/slurm: CPUs each job declares (default: 1)")
    g.add_argument("--gpus-per-job", type=float, default=0.0, metavar="N",
                   help="ray/slurm: GPUs each job declares (default: 0)")
    g.add_argument("--max-retries", type=int, default=3, metavar="N",
                   help="ray/slurm: times a job whose worker died is run again (default: 3)")
    g.add_argument("--slurm-partition", default=None, metavar="NAME",
                   help="slurm: the partition (default: the cluster's)")
    g.add_argument("--slurm-time", type=int, default=60, metavar="MIN",
                   help="slurm: time limit of each job in minutes (default: 60)")
    g.add_argument("--slurm-cluster", default="slurm", choices=("slurm", "local", "debug"),
                   help="slurm: submitit's cluster (local: subprocesses of this machine, for "
                   "trying a config; default: slurm)")
    g.add_argument("--track", action="append", default=None, metavar="mlflow[:URI]",
                   help="also log each job to mlflow[:URI] (default URI: a file store in "
                   "OUT/mlruns) or tensorboard[:DIR] (default: OUT/tensorboard); repeatable")


def _executor_and_tracker(args: argparse.Namespace) -> tuple[Any, Any]:
    from losslab.lab.executors import make_executor
    from losslab.lab.tracking import make_tracker, many_trackers

    name = getattr(args, "executor", "local")
    opts: dict[str, Any] = {}
    if name in ("ray", "slurm"):
        opts["max_retries"] = args.max_retries
    if name == "slurm":
        opts.update(timeout_min=args.slurm_time, partition=args.slurm_partition,
                    cluster=args.slurm_cluster)
    if name == "local" and (args.cpus_per_job != 1.0 or args.gpus_per_job != 0.0):
        raise ValueError("--cpus-per-job/--gpus-per-job are for --executor ray or slurm "
                         "(locally: --workers and --threads)")
    executor = make_executor(name, address=args.address, cpus_per_job=args.cpus_per_job,
                             gpus_per_job=args.gpus_per_job, **opts)
    specs = getattr(args, "track", None) or []
    tracker = many_trackers([make_tracker(s) for s in specs]) if specs else None
    return executor, tracker


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``report DIR`` to an argparse ``subparsers``."""
    p = subparsers.add_parser(
        "report", help="regenerate table.md, table.csv and plots of a run folder",
        description="Regenerate table.md, table.csv and the PNG plots from DIR/results.jsonl. "
        "With --claims: DIR is the folder holding the run folders (default runs) and the "
        "paper-claims table (losslab.lab.claims) is written to --output.",
    )
    p.add_argument("run_dir", metavar="DIR", nargs="?", default=None,
                   help="a run folder written by `losslab bench` (with --claims: the runs root)")
    p.add_argument("--claims", action="store_true",
                   help="write the table of paper claims and their verdicts from the run folders")
    p.add_argument("--output", default="docs/claims.md", metavar="FILE",
                   help="with --claims: the markdown file to write (default: docs/claims.md)")
    p.add_argument("--keep-absent", action="store_true",
                   help="with --claims: claims whose run folder is absent keep their rows "
                   "from the existing --output file (marked as kept) instead of 'not run'")
    p.set_defaults(func=report_main)
    return p


def _error(cmd: str, e: BaseException) -> int:
    notes = "".join(f" ({n})" for n in getattr(e, "__notes__", ()))
    print(f"losslab {cmd}: error: {e}{notes}", file=sys.stderr)
    return 2


def _interrupted(cmd: str, e: BaseException) -> int:
    print(f"losslab {cmd}: {str(e) or 'interrupted'}", file=sys.stderr)
    return 130


@contextlib.contextmanager
def _one_line_warnings(cmd: str) -> Iterator[None]:
    """The lab's RuntimeWarnings (a truncated or duplicated result row) as one stderr line
    each, when they happen; other warnings as usual."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: Any = None, line: str | None = None) -> None:
            if issubclass(category, RuntimeWarning):
                print(f"losslab {cmd}: warning: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _print_report(rep: dict[str, Any]) -> None:
    print(rep["markdown"])
    print(f"table: {rep['table_md']}  (csv: {rep['table_csv']})")
    for p in rep["plots"]:
        print(f"plot: {p}")
    if rep.get("conclusion"):
        print(f"conclusion: {rep['conclusion']}")


def bench_main(args: argparse.Namespace) -> int:
    from losslab.lab.config import load_config_file, resolve_config
    from losslab.lab.data.formats import DatasetLayoutError
    from losslab.lab.env import tune_malloc
    from losslab.lab.report import write_report
    from losslab.lab.results import CorruptResultsError
    from losslab.lab.runner import BenchInterrupted, ConfigMismatchError, run_bench
    from losslab.lab.tasks import get_task
    from losslab.lab.tasks.base import RUNNER_OPTIONS

    tune_malloc()  # this process is the lab's: keep freed tensor memory (no page-fault churn)
    task = get_task(args.task)
    names = [o.name for o in (*RUNNER_OPTIONS, *task.options)]
    cli = {n: getattr(args, n) for n in names if hasattr(args, n)}
    try:
        with _one_line_warnings("bench"):
            file_config = load_config_file(args.config) if args.config else {}
            config = resolve_config(task, file_config, cli)
            out = args.out or file_config.get("out")
            if not out:
                out = f"runs/{task.name}" + (f"-{config['dataset']}" if "dataset" in config
                                             else "")
            executor, tracker = _executor_and_tracker(args)
            folder = run_bench(task, config, out, quiet=args.quiet, report=False,
                               executor=executor, tracker=tracker)
    except BenchInterrupted as e:
        return _interrupted("bench", e)
    except KeyboardInterrupt:
        return _interrupted("bench", KeyboardInterrupt("interrupted before any job ran"))
    except (ValueError, ConfigMismatchError, CorruptResultsError, DatasetLayoutError,
            RuntimeError, OSError) as e:  # RuntimeError: RunFolderError, the lock, ...
        return _error("bench", e)
    if not args.no_report:
        try:
            with _one_line_warnings("report"):
                rep = write_report(folder, task=task)
        except KeyboardInterrupt:
            return _interrupted("bench", KeyboardInterrupt(
                f"interrupted while writing the report; every job is recorded, `losslab "
                f"report {folder}` writes it"))
        except OSError as e:
            return _error("bench", OSError(
                f"every job is recorded, but the report could not be written ({e}); "
                f"`losslab report {folder}` writes it"))
        _print_report(rep)
    return 0


def report_main(args: argparse.Namespace) -> int:
    from losslab.lab.report import write_report
    from losslab.lab.results import CorruptResultsError, RunFolderError

    if getattr(args, "claims", False):
        return claims_main(args)
    if args.run_dir is None:
        return _error("report", ValueError("give a run folder DIR (or --claims)"))
    folder = Path(args.run_dir)
    if not (folder / "results.jsonl").exists():
        return _error("report", ValueError(f"{folder} has no results.jsonl"))
    try:
        with _one_line_warnings("report"):
            rep = write_report(folder)
    except KeyboardInterrupt:
        return _interrupted("report", KeyboardInterrupt("interrupted"))
    except (ValueError, CorruptResultsError, RunFolderError, OSError) as e:
        return _error("report", e)
    _print_report(rep)
    return 0


def claims_main(args: argparse.Namespace) -> int:
    """``losslab report --claims [RUNS] [--output FILE]``: every claim's verdict, as markdown."""
    from losslab.lab.claims import claims_markdown, describe_run_folders, evaluate_claims

    root = Path(args.run_dir or "runs")
    try:
        verdicts = evaluate_claims(root)
        out = Path(args.output)
        keep = bool(getattr(args, "keep_absent", False))
        command = (f"losslab report --claims {root.as_posix()} --output {out.as_posix()}"
                   + (" --keep-absent" if keep else ""))
        previous = out.read_text() if keep and out.is_file() else None
        md = claims_markdown(verdicts, root.as_posix(), folders=describe_run_folders(root),
                             command=command, previous=previous)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(md + "\n")
    except (ValueError, RuntimeError, OSError) as e:
        return _error("report", e)
    print(md)
    print(f"claims: {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry: ``python -m losslab.lab.cli bench|report ...``."""
    parser = argparse.ArgumentParser(prog="losslab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_bench_parser(sub)
    add_report_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
