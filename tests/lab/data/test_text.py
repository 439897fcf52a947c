"""The text corpora of the LM task: character vocabulary, WordNet gloss parsing and its fetch
path (faked apt-get/dpkg), the pydoc corpus, windows and the seeded disjoint split."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from losslab.lab.data.fetch import FetchError, ensure_wordnet, find_wordnet
from losslab.lab.data.text import (
    CharVocab,
    load_corpus,
    split_windows,
    windows,
    wordnet_glosses,
)

_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"


def _write_wordnet(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    glosses = {"data.noun": ["that which is perceived", "an entity; \"a quote\""],
               "data.verb": ["breathe deeply"], "data.adj": ["able to act"],
               "data.adv": ["in a careful way"]}
    for name, gs in glosses.items():
        lines = [_HEADER] + [f"0000{i} 03 n 01 word 0 000 | {g}  \n" for i, g in enumerate(gs)]
        (folder / name).write_text("".join(lines))
    return folder


def test_char_vocab_round_trip_and_normalisation():
    v = CharVocab()
    text = "Hello, world!\n~ ok"
    ids = v.encode(text)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < v.size
    assert v.decode(ids) == text
    assert v.decode(v.encode("café\tnaïve \u2603")) == "cafe naive "  # NFKD, tab, dropped
    assert v.encode("\n")[0] == v.newline and v.encode(" ")[0] == 0


def test_wordnet_glosses_skip_the_licence_header(tmp_path):
    folder = _write_wordnet(tmp_path / "wn")
    assert wordnet_glosses(folder) == ["that which is perceived", 'an entity; "a quote"',
                                       "breathe deeply", "able to act", "in a careful way"]


def test_wordnet_fetch_uses_apt_get_download_and_dpkg_x(tmp_path):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd[:2])
        if cmd[:2] == ["apt-get", "download"]:
            (Path(kw["cwd"]) / "wordnet-base_3.0_all.deb").write_bytes(b"deb")
        elif cmd[:2] == ["dpkg", "-x"]:
            _write_wordnet(Path(cmd[3]) / "usr/share/wordnet")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    cache = tmp_path / "cache"
    got = ensure_wordnet(None, cache, system_dir=tmp_path / "none", run=fake_run)
    assert got == cache / "debroot/usr/share/wordnet"
    assert calls == [["apt-get", "download"], ["dpkg", "-x"]]
    assert find_wordnet(None, cache, system_dir=tmp_path / "none") == got
    with pytest.raises(FetchError, match="does not hold"):
        ensure_wordnet(tmp_path / "none", cache)
    with pytest.raises(FetchError, match="pydoc"):
        ensure_wordnet(None, tmp_path / "empty", download=False, system_dir=tmp_path / "none")


def test_wordnet_corpus_from_a_data_dir(tmp_path):
    folder = _write_wordnet(tmp_path / "wn2")
    c = load_corpus("wordnet", data_dir=folder, cache_dir=tmp_path / "c", download=False)
    assert c.n_documents == 5
    assert CharVocab().decode(c.tokens).startswith("that which is perceived\nan entity")


def test_pydoc_corpus_windows_and_split():
    c = load_corpus("pydoc")
    assert c.n_documents > 1000 and len(c.tokens) > 300_000
    w = windows(c.tokens, 65)
    assert w.shape == (len(c.tokens) // 65, 65)
    assert np.array_equal(w[1], c.tokens[65:130])
    tr, va, fr = split_windows(c.tokens, 65, 50, 30, seed=3, n_fresh=20)
    assert tr.shape == (50, 65) and va.shape == (30, 65) and fr.shape == (20, 65)
    rows = {r.tobytes() for r in np.concatenate([tr, va, fr])}
    assert len(rows) == 100  # disjoint (and no duplicate windows in this corpus sample)
    tr2, va2, _ = split_windows(c.tokens, 65, 50, 30, seed=3, n_fresh=20)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(tr, split_windows(c.tokens, 65, 50, 30, seed=4)[0])
    with pytest.raises(ValueError, match="exceeds"):
        split_windows(c.tokens, 65, len(w), 1, seed=0)
    with pytest.raises(ValueError, match="corpus must be"):
        load_corpus("gutenberg")
