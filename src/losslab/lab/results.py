"""``results.jsonl``: one JSON line per finished job, appended atomically.

* :func:`append_row` writes the whole encoded line (with its ``\\n``) in a single ``os.write``
  on an ``O_APPEND`` descriptor, then ``fsync``\\ s. A process killed mid-job therefore leaves
  either no line or (very rarely, a kill inside the write) a prefix without newline.
* :func:`read_rows` treats a last line that lacks its newline or does not parse as a truncated
  job: it warns, rewrites the file without it (atomically, via a temporary file and
  ``os.replace``) and the job is run again. A line that does not parse anywhere else is
  corruption: :class:`CorruptResultsError`, never silently skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CorruptResultsError", "append_row", "job_id", "read_rows"]

REQUIRED_KEYS = ("job_id", "task", "loss", "setting", "seed", "metrics")


class CorruptResultsError(RuntimeError):
    """A line of ``results.jsonl`` other than the last one is not a valid result row."""


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


def append_row(path: str | os.PathLike[str], row: Mapping[str, Any]) -> None:
    """Append one row as a single atomic ``os.write`` + ``fsync``."""
    data = (json.dumps(row, sort_keys=True, allow_nan=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # pragma: no cover - a full disk
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


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
