"""Real English text for the LM lab task, offline, as character tokens.

Corpora (:data:`CORPORA`):

* ``"wordnet"`` -- the glosses (definitions and examples) of the WordNet 3.0 database, from the
  Debian package ``wordnet-base`` (the system install ``/usr/share/wordnet``, or fetched
  without root by :func:`losslab.lab.data.fetch.ensure_wordnet`): 117,659 synsets, the text
  after ``|`` of every line of ``data.noun``, ``data.verb``, ``data.adj``, ``data.adv``.
* ``"pydoc"`` -- the help topics that CPython ships in ``pydoc_data/topics.py`` (the language
  reference's prose, ~0.46 M characters): real English text in every Python install, so the
  tests need no fetch.

Tokens are characters (:class:`CharVocab`): the 95 printable ASCII characters and ``"\\n"``
(96 ids); text is NFKD-normalised to ASCII first, other characters are dropped. The documents
are joined by ``"\\n"`` into one stream that :func:`windows` cuts into non-overlapping windows
of ``length`` tokens; :func:`split_windows` draws the seeded train and validation sets.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CORPORA",
    "CharVocab",
    "load_corpus",
    "pydoc_documents",
    "split_windows",
    "windows",
    "wordnet_glosses",
]

CORPORA = ("wordnet", "pydoc")


class CharVocab:
    """Printable ASCII (32..126) and newline: ids 0..94 are ``chr(32 + i)``, id 95 is
    ``"\\n"``."""

    size = 96
    newline = 95

    def encode(self, text: str) -> np.ndarray:
        """``int64 [n]`` ids of ``text`` (NFKD to ASCII; tabs become spaces; other characters
        outside the vocabulary are dropped)."""
        if not text.isascii():
            text = unicodedata.normalize("NFKD", text)
        ascii_text = text.encode("ascii", "ignore")
        b = np.frombuffer(ascii_text, dtype=np.uint8).astype(np.int64)
        b = np.where(b == 9, 32, b)
        keep = ((b >= 32) & (b <= 126)) | (b == 10)
        b = b[keep]
        return np.where(b == 10, self.newline, b - 32)

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join("\n" if i == self.newline else chr(32 + int(i)) for i in ids)


def wordnet_glosses(folder: str | Path) -> list[str]:
    """The glosses of the WordNet database in ``folder`` (``data.noun``, ``data.verb``,
    ``data.adj``, ``data.adv``, in that order; the licence header lines, which start with
    spaces, are skipped)."""
    out: list[str] = []
    for name in ("data.noun", "data.verb", "data.adj", "data.adv"):
        with open(Path(folder) / name, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" "):
                    continue
                _, sep, gloss = line.partition(" | ")
                if sep and gloss.strip():
                    out.append(gloss.strip())
    return out


def pydoc_documents() -> list[str]:
    """The paragraphs of CPython's ``pydoc_data.topics`` help texts, in sorted topic order."""
    from pydoc_data.topics import topics

    out: list[str] = []
    for key in sorted(topics):
        for para in topics[key].split("\n\n"):
            text = " ".join(para.split())
            if text:
                out.append(text)
    return out


@dataclass(frozen=True)
class Corpus:
    """A corpus as one token stream: ``tokens`` (int64), its ``name`` and ``source``."""

    name: str
    source: str
    tokens: np.ndarray
    n_documents: int


_LOADED: dict[tuple[str, str, str], Corpus] = {}


def load_corpus(name: str, *, data_dir: str | Path | None = None,
                cache_dir: str | Path = ".cache", download: bool = True) -> Corpus:
    """The corpus ``name`` (:data:`CORPORA`) as one character-token stream (documents joined
    by newlines). ``"wordnet"`` looks in ``data_dir``, the system install, then ``cache_dir``,
    fetching ``wordnet-base`` when ``download`` (:func:`~losslab.lab.data.fetch.ensure_wordnet`,
    raises :class:`~losslab.lab.data.fetch.FetchError` with what to do). Loaded once per
    process (every job of a worker process shares it)."""
    key = (name, str(data_dir or ""), str(cache_dir))
    if key not in _LOADED:
        _LOADED[key] = _load(name, data_dir, cache_dir, download)
    return _LOADED[key]


def _load(name: str, data_dir: str | Path | None, cache_dir: str | Path, download: bool
          ) -> Corpus:
    if name == "wordnet":
        from losslab.lab.data.fetch import ensure_wordnet

        folder = ensure_wordnet(data_dir or None, cache_dir, download=download)
        docs = wordnet_glosses(folder)
        source = f"WordNet 3.0 glosses ({folder})"
    elif name == "pydoc":
        docs = pydoc_documents()
        source = "CPython pydoc_data.topics"
    else:
        raise ValueError(f"corpus must be one of {CORPORA}, got {name!r}")
    tokens = CharVocab().encode("\n".join(docs))
    return Corpus(name, source, tokens, len(docs))


def windows(tokens: np.ndarray, length: int) -> np.ndarray:
    """``[W, length]`` non-overlapping windows of the stream (the tail shorter than ``length``
    is dropped)."""
    if length < 2:
        raise ValueError(f"length must be >= 2, got {length}")
    n = len(tokens) // length
    return np.ascontiguousarray(tokens[: n * length].reshape(n, length))


def split_windows(tokens: np.ndarray, length: int, n_train: int, n_val: int, seed: int,
                  n_fresh: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, fresh)``: ``n_train``, ``n_val`` and ``n_fresh`` distinct windows of
    ``length`` tokens, drawn without replacement with ``default_rng([seed, 1])`` (disjoint: no
    window is in two of them)."""
    w = windows(tokens, length)
    if n_train < 1 or n_val < 1 or n_fresh < 0:
        raise ValueError(f"n_train and n_val must be >= 1 and n_fresh >= 0, got {n_train}, "
                         f"{n_val} and {n_fresh}")
    total = n_train + n_val + n_fresh
    if total > len(w):
        raise ValueError(f"n_train + n_val + n_fresh = {total} exceeds the corpus's {len(w)} "
                         f"windows of {length} tokens")
    order = np.random.default_rng([seed, 1]).permutation(len(w))
    a, b = n_train, n_train + n_val
    return w[order[:a]], w[order[a:b]], w[order[b:total]]
