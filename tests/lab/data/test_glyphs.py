"""Tests of the shipped glyphs dataset, its loader, and the builder's pure functions."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from losslab.lab.data import load_fewshot_dataset
from losslab.lab.data.glyphs import DEFAULT_PATH, SPLITS, GlyphSet, load_glyphs

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def gs() -> GlyphSet:
    return load_glyphs()


@pytest.fixture(scope="module")
def builder():
    path = ROOT / "scripts" / "build_glyphs.py"
    spec = importlib.util.spec_from_file_location("build_glyphs", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_glyphs"] = mod
    spec.loader.exec_module(mod)
    return mod


# --- shipped file ---------------------------------------------------------------------------


def test_shapes_and_dtypes(gs: GlyphSet) -> None:
    size = gs.meta["size"]
    n = len(gs.labels)
    assert gs.images.shape == (n, size, size) and gs.images.dtype == np.uint8
    assert gs.labels.dtype == np.int32
    assert gs.sample_fonts.shape == (n,)
    assert gs.class_chars.shape == gs.class_scripts.shape == gs.class_split.shape
    assert all(len(c) == 1 for c in gs.class_chars)
    assert gs.meta["n_classes"] == gs.num_classes and gs.meta["n_samples"] == n


def test_labels_contiguous_and_balanced(gs: GlyphSet) -> None:
    counts = np.bincount(gs.labels, minlength=gs.num_classes)
    assert set(np.unique(gs.labels).tolist()) == set(range(gs.num_classes))
    assert (counts == gs.meta["per_class"]).all()


def test_classes_unique(gs: GlyphSet) -> None:
    assert len(set(gs.class_chars.tolist())) == gs.num_classes


def test_samples_of_a_class_come_from_distinct_faces(gs: GlyphSet) -> None:
    for c in range(0, gs.num_classes, 7):
        fonts = gs.sample_fonts[gs.labels == c]
        assert len(set(fonts.tolist())) == len(fonts)


def test_splits_disjoint_by_script(gs: GlyphSet) -> None:
    owner: dict[str, str] = {}
    for script, split in zip(gs.class_scripts.tolist(), gs.class_split.tolist()):
        assert owner.setdefault(script, split) == split, f"{script} in two splits"
    assert set(owner.values()) == set(SPLITS)


def test_split_method(gs: GlyphSet) -> None:
    total = 0
    for name in SPLITS:
        x, y = gs.split(name)
        classes = np.unique(y)
        assert len(classes) >= 20, "need room for 20-way / many 5-way episodes"
        assert (gs.class_split[classes] == name).all()
        assert (np.bincount(y)[classes] >= 5).all()  # 5-way 1-shot with 4 queries possible
        assert x.shape[0] == y.shape[0]
        total += len(y)
    assert total == len(gs.labels)
    with pytest.raises(ValueError):
        gs.split("holdout")


def test_images_not_blank(gs: GlyphSet) -> None:
    ink = (gs.images > 127).reshape(len(gs.images), -1).sum(1)
    assert (ink >= 4).all()
    assert (gs.images.reshape(len(gs.images), -1).max(1) == 255).mean() > 0.99


def test_no_near_duplicates_within_classes(gs: GlyphSet, builder) -> None:
    rng = np.random.default_rng(0)
    for c in rng.choice(gs.num_classes, size=60, replace=False):
        masks = gs.images[gs.labels == c] > 127
        iou = builder.iou_matrix(masks, masks)
        np.fill_diagonal(iou, 0.0)
        assert iou.max() <= gs.meta["dup_iou"] + 1e-6, f"class {c} ({gs.class_chars[c]})"


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found"):
        load_glyphs(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError):
        load_glyphs(bad)
    partial = tmp_path / "partial.npz"
    np.savez(partial, images=np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="missing arrays"):
        load_glyphs(partial)


def test_default_path_exists() -> None:
    assert DEFAULT_PATH.is_file()


# --- builder pure functions -----------------------------------------------------------------


def test_crop_and_pad(builder) -> None:
    img = np.zeros((10, 12), np.uint8)
    img[2:5, 3:9] = 200
    crop = builder.crop_to_ink(img)
    assert crop.shape == (3, 6)
    assert builder.crop_to_ink(np.zeros((4, 4), np.uint8)) is None
    sq = builder.pad_to_square(crop)
    assert sq.shape == (6, 6) and sq.sum() == crop.sum()
    assert (sq[:1] == 0).all() and (sq[-2:] == 0).all() and (sq[1:4] == 200).all()


def test_normalize_glyph_centres(builder) -> None:
    pytest.importorskip("PIL")
    img = np.zeros((100, 80), np.uint8)
    img[10:90, 30:50] = 255  # 80 x 20 bar
    g = builder.normalize_glyph(img, size=28, margin=2)
    assert g.shape == (28, 28) and g.dtype == np.uint8
    rows = np.flatnonzero((g > 127).any(1))
    cols = np.flatnonzero((g > 127).any(0))
    assert rows[0] == 2 and rows[-1] == 25  # long side fills size - 2*margin
    assert abs((cols[0] + cols[-1]) / 2 - 13.5) <= 1.0  # centred
    assert builder.normalize_glyph(np.zeros((5, 5), np.uint8)) is None


def test_iou_and_dedup(builder) -> None:
    a = np.zeros((8, 8), bool)
    a[2:6, 2:6] = True
    b = np.zeros((8, 8), bool)
    b[2:6, 4:8] = True
    assert builder.binary_iou(a, a) == 1.0
    assert builder.binary_iou(a, b) == pytest.approx(8 / 24)
    assert builder.binary_iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    m = builder.iou_matrix(np.stack([a, b]), np.stack([a, b]))
    assert m.shape == (2, 2) and m[0, 1] == pytest.approx(8 / 24)
    assert builder.tolerant_iou(a, np.roll(a, 1, axis=1)) > builder.binary_iou(
        a, np.roll(a, 1, axis=1))
    imgs = np.stack([a, a, b, a]).astype(np.uint8) * 255
    assert builder.dedup_indices(imgs, 0.95) == [0, 2]
    assert builder.dedup_indices(imgs, 0.2) == [0]


def test_is_box(builder) -> None:
    box = np.zeros((28, 28), bool)
    box[4:24, 6:22] = True
    box[7:21, 9:19] = False
    assert builder.is_box(box)
    ring = np.zeros((28, 28), bool)
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 13.5, xx - 13.5)
    ring[(r > 8) & (r < 11)] = True
    assert not builder.is_box(ring)
    solid = np.zeros((28, 28), bool)
    solid[4:24, 4:24] = True
    assert not builder.is_box(solid)


def test_scripts_and_candidates(builder) -> None:
    assert builder.char_script("a") == "LATIN" and builder.char_script("7") == "LATIN"
    assert builder.char_script("Ω") == "GREEK" and builder.char_script("ж") == "CYRILLIC"
    assert builder.char_script("٣") == "ARABIC" and builder.char_script("۳") == "ARABIC"
    assert builder.char_script("한") == "HANGUL" and builder.char_script("中") == "HAN"
    assert builder.is_candidate_char("ক")
    assert not builder.is_candidate_char("ﬁ")  # compatibility ligature
    assert not builder.is_candidate_char("ª")  # NFKC -> a
    assert not builder.is_candidate_char("́")  # combining mark
    assert not builder.is_candidate_char("+")
    assert builder.is_case_pair("o", "O") and not builder.is_case_pair("o", "0")


def test_split_scripts(builder) -> None:
    counts = {f"S{i}": 10 + 5 * i for i in range(20)}
    a = builder.split_scripts(counts, seed=0)
    assert a == builder.split_scripts(counts, seed=0)
    total = sum(counts.values())
    for name, frac in zip(SPLITS, (0.6, 0.15, 0.25)):
        scripts = [s for s, v in a.items() if v == name]
        assert len(scripts) >= 5
        assert abs(sum(counts[s] for s in scripts) / total - frac) < 0.05


def test_face_order_round_robin(builder) -> None:
    F = builder.Face
    names = [("A Sans", "Regular"), ("A Sans", "Bold"), ("A Sans Condensed", "Regular"),
             ("B Serif", "Regular"), ("C Mono", "Regular")]
    faces = [F("p", i, fam, st, builder.design_name(fam), frozenset())
             for i, (fam, st) in enumerate(names)]
    order = builder.face_order(faces, seed=1)
    assert sorted(order) == list(range(5))
    first_designs = {faces[i].design for i in order[:3]}
    assert first_designs == {"a sans", "b serif", "c mono"}


# --- the few-shot adapter and the packaging ----------------------------------------------------


@dataclass(frozen=True)
class FakeGlyphSet:
    images: np.ndarray
    labels: np.ndarray
    class_split: tuple
    meta: dict = field(default_factory=dict)

    def split(self, name):
        keep = np.isin(self.labels, [i for i, s in enumerate(self.class_split) if s == name])
        return self.images[keep], self.labels[keep]


def test_glyphs_adapter(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(6), 4).astype(np.int32)
    images = rng.integers(0, 256, (24, 28, 28), dtype=np.uint8)
    gs = FakeGlyphSet(images, labels, ("train", "train", "val", "val", "test", "test"),
                      {"version": "x", "fonts": [1, 2]})
    seen = {}

    def load_glyphs(path=None):
        seen["path"] = path
        return gs

    mod = types.ModuleType("losslab.lab.data.glyphs")
    mod.load_glyphs = load_glyphs
    monkeypatch.setitem(sys.modules, "losslab.lab.data.glyphs", mod)
    ds = load_fewshot_dataset("glyphs")
    assert seen["path"] is None
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 8, 8]
    assert ds.info == {"version": "x"}
    x = ds.splits["test"].batch([0])
    assert torch.allclose(x[0, 0], torch.from_numpy(images[16]).float() / 255)


def test_glyphs_are_lab_package_data_and_core_import_never_touches_them():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    lines = {ln.split("=", 1)[0].strip(): ln.split("=", 1)[1] for ln in section.splitlines()
             if "=" in ln and not ln.lstrip().startswith("#")}
    assert "*.npz" in lines['"losslab.lab.data"']
    assert "npz" not in lines["losslab"] and "lab/" not in lines["losslab"]
    assert DEFAULT_PATH.parent == ROOT / "src" / "losslab" / "lab" / "data"
    # `import losslab` (and its metrics) imports nothing of the lab, nor matplotlib
    code = ("import sys, losslab, losslab.metrics, losslab.functional; "
            "bad = [m for m in sys.modules if m.startswith(('losslab.lab', 'matplotlib'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    env_path = str(ROOT / "src")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": env_path}, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

