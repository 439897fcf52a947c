"""Find a dataset on disk, or fetch its Debian package without root: Fashion-MNIST (``make
bench-noisy``) and the WordNet database (``wordnet-base``: the glosses of ``make bench-lm``).

Lookup order of :func:`ensure_fashion_mnist`: an explicit ``data_dir``; the system install of
the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``); a copy
unpacked earlier under ``CACHE/debroot``. If none holds the four IDX files, the package is
fetched with the system's own package client -- ``apt-get download dataset-fashion-mnist``
(no root needed) into ``CACHE/`` -- and unpacked with ``dpkg -x`` into ``CACHE/debroot``. When
that is impossible (no apt-get, no network access to the distribution's archive), the error
says what to install or where to point ``--data-dir``.

WordNet (:func:`ensure_wordnet`) takes the same path (:func:`fetch_deb`, the one fetch code
path of the lab): ``data_dir``, the system install ``/usr/share/wordnet``, ``CACHE/debroot``,
else ``apt-get download wordnet-base`` + ``dpkg -x``.

Command line (prints the folder on stdout; exit status 1 with a message on stderr)::

    python -m losslab.lab.data.fetch {fashion-mnist,wordnet} [--cache-dir .cache] [--data-dir DIR]
                                                   [--no-download]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from losslab.lab.data.classification import FASHION_MNIST_DIR

__all__ = [
    "DEB_PACKAGE",
    "FASHION_MNIST_FILES",
    "WORDNET_DIR",
    "WORDNET_FILES",
    "WORDNET_PACKAGE",
    "FetchError",
    "ensure_fashion_mnist",
    "ensure_wordnet",
    "fetch_deb",
    "fetch_fashion_mnist_deb",
    "find_fashion_mnist",
    "find_wordnet",
    "has_fashion_mnist",
    "has_wordnet",
    "main",
]

DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)
_DEB_SUBDIR = Path(FASHION_MNIST_DIR.lstrip("/"))  # usr/share/datasets/fashion-mnist

Runner = Callable[..., Any]  # subprocess.run-compatible


class FetchError(RuntimeError):
    """The dataset is not on disk and could not be fetched; the message says what to do."""


def has_fashion_mnist(folder: str | Path) -> bool:
    """Whether ``folder`` holds the four Fashion-MNIST IDX files (``.gz`` or not)."""
    d = Path(folder)
    return all((d / f"{f}.gz").is_file() or (d / f).is_file() for f in FASHION_MNIST_FILES)


def _candidates(data_dir: str | Path | None, cache_dir: str | Path,
                system_dir: str | Path) -> list[Path]:
    out = [Path(data_dir)] if data_dir else []
    return [*out, Path(system_dir), Path(cache_dir) / "debroot" / _DEB_SUBDIR]


def find_fashion_mnist(data_dir: str | Path | None = None, cache_dir: str | Path = ".cache",
                       *, system_dir: str | Path = FASHION_MNIST_DIR) -> Path | None:
    """The first folder holding Fashion-MNIST: ``data_dir``, the system install, then the
    unpacked package under ``cache_dir``; ``None`` if none does."""
    for d in _candidates(data_dir, cache_dir, system_dir):
        if has_fashion_mnist(d):
            return d
    return None


def _how_to_install(cache_dir: Path) -> str:
    return (
        f"Install the Debian/Ubuntu package {DEB_PACKAGE} (`sudo apt-get install {DEB_PACKAGE}`"
        f"; files land in {FASHION_MNIST_DIR}), or put train-images-idx3-ubyte.gz, "
        "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz "
        "(the official Fashion-MNIST release) in a folder and pass it as --data-dir "
        f"(make bench-noisy DATA_DIR=...), or unpack the package into {cache_dir}/debroot "
        "yourself (`apt-get download ...; dpkg -x ...`)."
    )


def fetch_deb(package: str, subdir: str | Path, cache_dir: str | Path, *,
              ok: Callable[[Path], bool], how: str, what: str,
              run: Runner = subprocess.run) -> Path:
    """The one fetch path of the lab: ``apt-get download PACKAGE`` into ``cache_dir`` (no root
    needed; skipped when a ``PACKAGE_*.deb`` is already there) and ``dpkg -x`` it into
    ``cache_dir/debroot``; return ``cache_dir/debroot/subdir`` once ``ok(folder)`` holds.

    ``how`` (what to do instead) ends every :class:`FetchError`; ``what`` names the files
    looked for. ``run`` is :func:`subprocess.run` (injectable for tests).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    missing = [t for t in ("apt-get", "dpkg") if shutil.which(t) is None]
    if missing and run is subprocess.run:
        raise FetchError(f"{what} not found and {' and '.join(missing)} not available "
                         f"to fetch it. {how}")
    debs = sorted(cache.glob(f"{package}_*.deb"))
    if not debs:
        try:
            res = run(["apt-get", "download", package], cwd=str(cache),
                      capture_output=True, text=True)
        except OSError as e:
            raise FetchError(f"`apt-get download {package}` could not start ({e}). "
                             f"{how}") from None
        debs = sorted(cache.glob(f"{package}_*.deb"))
        if res.returncode != 0 or not debs:
            detail = (getattr(res, "stderr", "") or "").strip().splitlines()[-3:]
            raise FetchError(
                f"`apt-get download {package}` failed (exit {res.returncode}"
                + (": " + " / ".join(detail) if detail else "") + "). Run `apt-get update` "
                f"first if the package is unknown. {how}"
            )
    root = cache / "debroot"
    try:
        res = run(["dpkg", "-x", str(debs[-1]), str(root)], capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"`dpkg -x` could not start ({e}). {how}") from None
    folder = root / subdir
    if res.returncode != 0 or not ok(folder):
        raise FetchError(f"unpacking {debs[-1]} with `dpkg -x` did not produce the {what} "
                         f"files in {folder}. {how}")
    return folder


def fetch_fashion_mnist_deb(cache_dir: str | Path = ".cache", *,
                            run: Runner = subprocess.run) -> Path:
    """``apt-get download dataset-fashion-mnist`` into ``cache_dir`` and ``dpkg -x`` it into
    ``cache_dir/debroot`` (no root needed; :func:`fetch_deb`); return the folder of the IDX
    files. Raises :class:`FetchError` with instructions when apt-get/dpkg are missing or fail.
    """
    return fetch_deb(DEB_PACKAGE, _DEB_SUBDIR, cache_dir, ok=has_fashion_mnist,
                     how=_how_to_install(Path(cache_dir)), what="Fashion-MNIST", run=run)


def ensure_fashion_mnist(data_dir: str | Path | None = None, cache_dir: str | Path = ".cache",
                         *, download: bool = True, system_dir: str | Path = FASHION_MNIST_DIR,
                         run: Runner = subprocess.run) -> Path:
    """The Fashion-MNIST folder (see :func:`find_fashion_mnist`), fetching the Debian package
    into ``cache_dir`` when it is nowhere on disk and ``download`` is true."""
    if data_dir and not has_fashion_mnist(data_dir):
        raise FetchError(f"--data-dir {data_dir} does not hold the Fashion-MNIST IDX files. "
                         f"{_how_to_install(Path(cache_dir))}")
    found = find_fashion_mnist(data_dir, cache_dir, system_dir=system_dir)
    if found is not None:
        return found
    if not download:
        raise FetchError(f"Fashion-MNIST not found in {system_dir} or "
                         f"{Path(cache_dir) / 'debroot' / _DEB_SUBDIR}. "
                         f"{_how_to_install(Path(cache_dir))}")
    return fetch_fashion_mnist_deb(cache_dir, run=run)


WORDNET_PACKAGE = "wordnet-base"
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")


def has_wordnet(folder: str | Path) -> bool:
    """Whether ``folder`` holds the four WordNet ``data.*`` files."""
    return all((Path(folder) / f).is_file() for f in WORDNET_FILES)


def find_wordnet(data_dir: str | Path | None = None, cache_dir: str | Path = ".cache",
                 *, system_dir: str | Path = WORDNET_DIR) -> Path | None:
    """The first folder holding WordNet's ``data.*`` files: ``data_dir``, the system install,
    then the unpacked package under ``cache_dir``; ``None`` if none does."""
    out = [Path(data_dir)] if data_dir else []
    for d in (*out, Path(system_dir), Path(cache_dir) / "debroot" / WORDNET_DIR.lstrip("/")):
        if has_wordnet(d):
            return d
    return None


def _how_to_install_wordnet(cache_dir: Path) -> str:
    return (
        f"Install the Debian/Ubuntu package {WORDNET_PACKAGE} (`sudo apt-get install "
        f"{WORDNET_PACKAGE}`; files land in {WORDNET_DIR}), or point --data-dir to a folder "
        f"holding {', '.join(WORDNET_FILES)} (the WordNet 3.0 database), or use the corpus "
        "that ships with Python (--corpus pydoc)."
    )


def ensure_wordnet(data_dir: str | Path | None = None, cache_dir: str | Path = ".cache",
                   *, download: bool = True, system_dir: str | Path = WORDNET_DIR,
                   run: Runner = subprocess.run) -> Path:
    """The WordNet database folder (see :func:`find_wordnet`), fetching ``wordnet-base``
    into ``cache_dir`` (:func:`fetch_deb`) when it is nowhere on disk and ``download`` is true."""
    how = _how_to_install_wordnet(Path(cache_dir))
    if data_dir and not has_wordnet(data_dir):
        raise FetchError(f"--data-dir {data_dir} does not hold the WordNet data files. {how}")
    found = find_wordnet(data_dir, cache_dir, system_dir=system_dir)
    if found is not None:
        return found
    if not download:
        raise FetchError(f"WordNet not found in {system_dir} or "
                         f"{Path(cache_dir) / 'debroot' / WORDNET_DIR.lstrip('/')}. {how}")
    return fetch_deb(WORDNET_PACKAGE, WORDNET_DIR.lstrip("/"), cache_dir, ok=has_wordnet,
                     how=how, what="WordNet", run=run)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m losslab.lab.data.fetch",
                                description="Print the folder of a dataset, fetching its "
                                "Debian package without root when needed.")
    p.add_argument("dataset", choices=["fashion-mnist", "wordnet"])
    p.add_argument("--cache-dir", default=".cache")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--no-download", action="store_true")
    args = p.parse_args(argv)
    try:
        ensure = ensure_wordnet if args.dataset == "wordnet" else ensure_fashion_mnist
        folder = ensure(args.data_dir, args.cache_dir, download=not args.no_download)
    except FetchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
