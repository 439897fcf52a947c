"""The records of a run folder: ``results.jsonl`` (one JSON line per finished job, appended
atomically) and ``config.json`` (read back by the runner and the report).

* :class:`ResultsWriter` opens ``results.jsonl`` for appending once, before the first job (so
  a folder where it cannot be written fails before any training, and a later permission change
  cannot lose a result), and writes each row, with its ``\\n``, in a single ``os.write`` on the
  ``O_APPEND`` descriptor, then ``fsync``\\ s. A process killed mid-job therefore leaves either
  no line or (very rarely, a kill inside the write) a prefix without newline. When the write
  fails part-way (a full disk, a file size limit: the kernel lets part of the line through,
  then refuses the rest), the file is cut back to its previous length before the error is
  raised, so no half row is left behind.
* :func:`read_rows` treats a last line that lacks its newline or does not parse as a truncated
  job: it warns, rewrites the file without it (atomically, via a temporary file and
  ``os.replace``) and the job is run again. A line that does not parse anywhere else is
  corruption: :class:`CorruptResultsError`, never silently skipped.
* :func:`unique_rows` keeps the first row of each ``job_id`` (a results file that was copied
  onto itself or concatenated would otherwise count its jobs twice).
* :func:`read_run_config` reads ``config.json``; a malformed one is a :class:`RunFolderError`
  that says what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "CorruptResultsError",
    "Duplicates",
    "ResultsWriter",
    "RunFolderError",
    "append_row",
    "job_id",
    "read_rows",
    "read_run_config",
    "unique_rows",
]

REQUIRED_KEYS = ("job_id", "task", "loss", "setting", "seed", "metrics")


class CorruptResultsError(RuntimeError):
    """A line of ``results.jsonl`` other than the last one is not a valid result row."""


class RunFolderError(RuntimeError):
    """The run folder cannot be used: it cannot be created or written (read-only, full disk, a
    file where a folder is expected, ...), or its ``config.json`` is malformed."""


def job_id(
    task: str, loss: str, setting: Mapping[str, Any], seed: int, fingerprint: Mapping[str, Any]
) -> str:
    """Identity of a job: a hash of the task, loss spec, setting, seed and the run fingerprint
    (every result-affecting option), so that a changed configuration never reuses a row."""
    blob = json.dumps(
        {"task": task, "loss": loss, "setting": dict(setting), "seed": int(seed),
         "config": dict(fingerprint)},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _encode(row: Mapping[str, Any]) -> bytes:
    return (json.dumps(row, sort_keys=True, allow_nan=True) + "\n").encode()


def _append(fd: int, data: bytes, path: Path) -> None:
    """One whole line or nothing: on any error the file is cut back to where it was."""
    start = os.fstat(fd).st_size  # the run folder's lock keeps other writers out
    try:
        written = os.write(fd, data)
        if written < len(data):
            # part of the line got through (full disk, file size limit): the rest either
            # fails with the real error or, if space appeared, completes the line
            written += os.write(fd, data[written:])
            if written < len(data):
                raise OSError(28, f"short write ({written} of {len(data)} bytes)", str(path))
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise


class ResultsWriter:
    """``results.jsonl`` opened for appending (created if missing); use as a context manager.

    Opening it is the check that the results can be recorded at all: the runner opens it
    before the first job.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row: a single ``os.write`` + ``fsync``; whole or not at all."""
        if self._fd < 0:
            raise ValueError(f"{self.path}: the writer is closed")
        _append(self._fd, _encode(row), self.path)

    def close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one row as a single atomic ``os.write`` + ``fsync`` (see :class:`ResultsWriter`)."""
    with ResultsWriter(path) as w:
        w.append(row)


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict) or any(k not in row for k in REQUIRED_KEYS):
        return None
    return row


def read_rows(path: str | os.PathLike[str], *, repair: bool = True) -> list[dict[str, Any]]:
    """Rows of a results file (``[]`` if it does not exist).

    A truncated last line is dropped with a warning and, with ``repair``, removed from the
    file. A bad line elsewhere raises :class:`CorruptResultsError`.
    """
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: bytes after the last newline
    rows: list[dict[str, Any]] = []
    raw: list[bytes] = []
    truncated: bytes | None = tail if tail.strip() else None
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        row = _parse(line)
        if row is None:
            if i == len(complete) - 1 and truncated is None:
                truncated = line
                continue
            raise CorruptResultsError(
                f"{p}: line {i + 1} is not a valid result row (corrupt file; it is not the "
                f"last line, so it is not a job killed mid-write). Fix or remove that line, "
                f"or start a new run folder. Line starts: {line[:80]!r}"
            )
        rows.append(row)
        raw.append(line)
    if truncated is not None:
        warnings.warn(
            f"{p}: dropping a truncated last line (a job killed while writing its result); "
            f"that job will be run again. Line starts: {truncated[:80]!r}",
            RuntimeWarning,
            stacklevel=2,
        )
        if repair:
            good = b"".join(line + b"\n" for line in raw)
            tmp = p.with_name(p.name + ".tmp")
            with open(tmp, "wb") as f:
                f.write(good)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
    return rows


@dataclass(frozen=True)
class Duplicates:
    """What :func:`unique_rows` left out."""

    copies: dict[str, int] = field(default_factory=dict)  # job_id -> extra copies dropped
    conflicting: list[str] = field(default_factory=list)  # job_ids whose copies differ

    @property
    def total(self) -> int:
        return sum(self.copies.values())


def unique_rows(rows: Iterable[Mapping[str, Any]]) -> tuple[list[Any], Duplicates]:
    """The first row of each ``job_id``, in file order, and what was dropped. A copy whose
    metrics differ from the kept row's is listed in ``conflicting`` (it should never happen:
    a job runs once; two copies come from copied or merged files)."""
    first: dict[str, Mapping[str, Any]] = {}
    out: list[Any] = []
    dup = Duplicates()
    for r in rows:
        jid = r["job_id"]
        if jid not in first:
            first[jid] = r
            out.append(r)
            continue
        dup.copies[jid] = dup.copies.get(jid, 0) + 1
        same = json.dumps(r["metrics"], sort_keys=True) == json.dumps(first[jid]["metrics"],
                                                                       sort_keys=True)
        if not same and jid not in dup.conflicting:
            dup.conflicting.append(jid)
    return out, dup


_CONFIG_HINT = (
    "it is written by `losslab bench`; restore it, or delete it: the next `losslab bench` into "
    "this folder writes it again, and the rows of results.jsonl are kept"
)


def read_run_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``config.json`` of a run folder (``{}`` if there is none); :class:`RunFolderError` if it
    cannot be read or is not what ``losslab bench`` writes."""
    p = Path(folder) / "config.json"
    if not p.exists():
        return {}
    try:
        cfg = json.loads(p.read_text())
    except OSError as e:
        raise RunFolderError(f"{p}: cannot read the run folder's configuration ({e}); "
                             f"{_CONFIG_HINT}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RunFolderError(f"{p} is not valid JSON ({e}); {_CONFIG_HINT}") from None
    problem = None
    if not isinstance(cfg, dict):
        problem = f"a JSON {type(cfg).__name__}, not an object"
    elif not isinstance(cfg.get("task", ""), str):
        problem = f"'task' is {cfg['task']!r}, not a task name"
    elif not isinstance(cfg.get("fingerprint", {}), dict):
        problem = "'fingerprint' is not an object"
    elif not isinstance(cfg.get("losses", []), list) or not all(
            isinstance(x, str) for x in cfg.get("losses", [])):
        problem = "'losses' is not a list of loss names"
    if problem:
        raise RunFolderError(f"{p} is malformed ({problem}); {_CONFIG_HINT}")
    return cfg
