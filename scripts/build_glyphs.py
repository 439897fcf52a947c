#!/usr/bin/env python3
"""Build the "glyphs" few-shot dataset: Unicode characters rendered from real fonts.

Classes are characters, samples are font faces, alphabets are Unicode scripts (Omniglot-like).
Font faces come from Debian font packages, fetched with ``apt-get download`` into a cache folder
and unpacked with ``dpkg -x`` (nothing is installed system-wide).

Pipeline (see ``src/losslab/lab/data/GLYPHS.md`` for the full description):

1. Download + unpack packages (skipped when the cache already holds them).
2. Index every .ttf/.otf/.ttc/.otc face with fontTools (cmap coverage); drop duplicate
   (family, style) pairs.
3. Candidate characters: general category Lu/Ll/Lo/Nd, stable under NFKC (no compatibility
   forms), assigned to a script by the first word(s) of their Unicode name.
4. Per script, render candidates (most-covered and undecomposed first) in every covering face,
   visiting faces round-robin over design families; crop to ink, pad to a square, resize;
   drop blank renders, tofu (equal to the face's render of an unassigned code point) and
   near-duplicates (binary IoU > 0.95 with an already kept render of that class).
5. Drop confusable characters (same or another script) greedily, cap classes per script.
6. Assign whole scripts to train/val/test, write a compressed npz.

Only numpy is needed to import this module; Pillow and fontTools are imported where used.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import pickle
import random
import subprocess
import sys
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path

import numpy as np

BUILDER_VERSION = "1.1"
SPLITS = ("train", "val", "test")

TINY = [
    "fonts-noto-core", "fonts-dejavu-core", "fonts-freefont-ttf", "fonts-urw-base35",
    "fonts-texgyre", "fonts-liberation2", "fonts-croscore",
]
# The shipped default: TINY plus small packages that add designs for non-Latin scripts.
DEFAULT = [
    *TINY,
    "fonts-dejavu-extra", "fonts-sil-charis", "fonts-sil-gentiumplus", "fonts-sil-andika",
    "fonts-paratype", "fonts-gfs-didot", "fonts-gfs-neohellenic", "fonts-gfs-artemisia",
    "fonts-mph-2b-damase", "fonts-sil-ezra", "culmus", "fonts-sil-abyssinica",
    "fonts-bpg-georgian", "fonts-khmeros", "fonts-lao", "fonts-lklug-sinhala",
    "fonts-sil-padauk", "fonts-tlwg-garuda-ttf", "fonts-tlwg-kinnari-ttf",
    "fonts-tlwg-loma-ttf", "fonts-tlwg-norasi-ttf", "fonts-tlwg-sawasdee-ttf",
    "fonts-tlwg-umpush-ttf", "fonts-tlwg-waree-ttf", "fonts-tlwg-typo-ttf",
    "fonts-lohit-deva", "fonts-lohit-beng-bengali", "fonts-lohit-gujr", "fonts-lohit-guru",
    "fonts-lohit-knda", "fonts-lohit-mlym", "fonts-lohit-orya", "fonts-lohit-taml",
    "fonts-lohit-telu", "fonts-smc-rachana", "fonts-smc-meera", "fonts-smc-manjari",
    "fonts-smc-chilanka", "fonts-teluguvijayam", "fonts-samyak-deva", "fonts-samyak-gujr",
    "fonts-gargi", "fonts-sarai", "fonts-kalapi", "fonts-navilu", "fonts-kacst",
    "fonts-farsiweb", "fonts-hosny-amiri", "fonts-sil-scheherazade", "fonts-sil-lateef",
    "fonts-noto-extra", "fonts-beng-extra", "fonts-deva-extra", "fonts-gujr-extra",
    "fonts-guru-extra", "fonts-orya-extra", "fonts-telu-extra", "fonts-nakula", "fonts-sahadeva",
    "fonts-yrsa-rasa", "fonts-smc-anjalioldlipi", "fonts-smc-dyuthi", "fonts-smc-gayathri",
    "fonts-smc-keraleeyam", "fonts-smc-suruma", "fonts-smc-uroob", "fonts-sil-annapurna",
    "fonts-sil-harmattan", "fonts-tibetan-machine", "fonts-sil-mondulkiri",
]
# More designs, all non-CJK scripts.
LEAN = [
    *DEFAULT,
    "fonts-sil-doulos", "fonts-sil-gentium-basic", "fonts-cmu",
    "fonts-linuxlibertine", "fonts-ebgaramond", "fonts-junicode", "fonts-gfs-porson",
    "fonts-gfs-bodoni-classic", "fonts-gfs-gazis", "fonts-gfs-theokritos", "fonts-gfs-solomos",
    "fonts-arabeyes", "fonts-ukij-uyghur", "fonts-noto-ui-core", "fonts-tlwg-purisa-ttf",
    "fonts-tlwg-mono-ttf",
    "fonts-tlwg-typist-ttf", "fonts-tlwg-typewriter-ttf", "fonts-tlwg-laksaman-ttf",
    "fonts-unifont", "fonts-open-sans", "fonts-lato", "fonts-roboto-unhinted",
    "fonts-crosextra-carlito", "fonts-crosextra-caladea", "fonts-stix", "fonts-vollkorn",
]
# Everything above plus CJK/Hangul/Kana and handwriting-like faces.
ALL = [
    *LEAN,
    "fonts-noto-cjk", "fonts-noto-cjk-extra", "fonts-arphic-ukai", "fonts-arphic-uming",
    "fonts-arphic-gkai00mp", "fonts-arphic-bkai00mp", "fonts-arphic-bsmi00lp",
    "fonts-arphic-gbsn00lp", "fonts-wqy-microhei", "fonts-wqy-zenhei", "fonts-nanum",
    "fonts-nanum-extra", "fonts-unfonts-core", "fonts-unfonts-extra", "fonts-baekmuk",
    "fonts-ipafont-gothic", "fonts-ipafont-mincho", "fonts-vlgothic", "fonts-klee",
    "fonts-lxgw-wenkai", "fonts-bwht", "fonts-sjfonts", "fonts-dkg-handwriting", "fonts-seto",
]
PRESETS: dict[str, list[str]] = {"tiny": TINY, "default": DEFAULT, "lean": LEAN, "all": ALL}

FONT_EXTS = (".ttf", ".otf", ".ttc", ".otc")
# Unicode-name prefixes of two or more words that name a script (checked before one word).
MULTIWORD_SCRIPTS = (
    "EXTENDED ARABIC-INDIC", "ARABIC-INDIC", "CANADIAN SYLLABICS", "CJK UNIFIED IDEOGRAPH",
    "CJK COMPATIBILITY IDEOGRAPH", "OLD ITALIC",
    "LINEAR A", "LINEAR B", "OL CHIKI", "TAI LE", "NEW TAI LUE", "TAI THAM", "TAI VIET",
    "MEETEI MAYEK", "SYLOTI NAGRI", "KAYAH LI", "OLD TURKIC", "OLD PERSIAN", "OLD SOUTH ARABIAN",
    "OLD NORTH ARABIAN", "IMPERIAL ARAMAIC", "INSCRIPTIONAL PAHLAVI", "INSCRIPTIONAL PARTHIAN",
    "PSALTER PAHLAVI", "OLD HUNGARIAN", "OLD PERMIC", "HANIFI ROHINGYA", "MASARAM GONDI",
    "GUNJALA GONDI", "PAU CIN HAU", "WARANG CITI", "MENDE KIKAKUI", "PAHAWH HMONG",
    "NYIAKENG PUACHUE HMONG", "ZANABAZAR SQUARE", "CAUCASIAN ALBANIAN", "OLD SOGDIAN",
    "ANATOLIAN HIEROGLYPH", "EGYPTIAN HIEROGLYPH", "SIGNWRITING", "DIVES AKURU", "KHITAN SMALL",
    "TANGUT COMPONENT", "NUSHU CHARACTER", "LISU", "NKO", "HANGUL SYLLABLE", "HANGUL LETTER",
    "HANGUL JONGSEONG", "HANGUL CHOSEONG", "HANGUL JUNGSEONG",
)
# Canonical script names for some name prefixes.
SCRIPT_ALIASES = {
    "CJK UNIFIED IDEOGRAPH": "HAN", "CJK COMPATIBILITY IDEOGRAPH": "HAN",
    "HANGUL SYLLABLE": "HANGUL", "HANGUL LETTER": "HANGUL", "HANGUL JONGSEONG": "HANGUL",
    "HANGUL CHOSEONG": "HANGUL", "HANGUL JUNGSEONG": "HANGUL", "NUSHU CHARACTER": "NUSHU",
    "TANGUT COMPONENT": "TANGUT", "EGYPTIAN HIEROGLYPH": "EGYPTIAN", "ANATOLIAN HIEROGLYPH":
    "ANATOLIAN", "KHITAN SMALL": "KHITAN", "NKO": "NKO", "ARABIC-INDIC": "ARABIC",
    "EXTENDED ARABIC-INDIC": "ARABIC",
}
# First name words that are not scripts (e.g. "MODIFIER LETTER ...", "MATHEMATICAL ...").
NOT_SCRIPTS = {
    "MODIFIER", "MATHEMATICAL", "FULLWIDTH", "HALFWIDTH", "CIRCLED", "PARENTHESIZED",
    "SUPERSCRIPT", "SUBSCRIPT", "SMALL", "COMBINING", "SQUARED", "NEGATIVE", "DOUBLE-STRUCK",
    "SCRIPT", "BLACK-LETTER", "IDEOGRAPHIC", "KANGXI", "CJK", "VULGAR", "ROMAN", "DIGIT",
    "TURNED", "REVERSED", "INVERTED", "VEDIC",
}


# ----------------------------------------------------------------------------------------------
# Pure array helpers (numpy only; unit-tested without fonts)
# ----------------------------------------------------------------------------------------------


def crop_to_ink(img: np.ndarray, threshold: int = 0) -> np.ndarray | None:
    """Crop a 2-D uint8 image to the bounding box of pixels > ``threshold``; None if blank."""
    mask = img > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def pad_to_square(img: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D image to a square, keeping it centred."""
    h, w = img.shape
    s = max(h, w)
    out = np.zeros((s, s), dtype=img.dtype)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = img
    return out


def normalize_glyph(img: np.ndarray, size: int = 28, margin: int = 2) -> np.ndarray | None:
    """Crop to ink, pad to a square and resize so the longer side fills ``size - 2*margin``.

    Returns a ``size x size`` uint8 image (ink = 255 on 0), or None for a blank input.
    Resizing uses Pillow's area-averaging (``BOX``) filter.
    """
    from PIL import Image

    crop = crop_to_ink(img)
    if crop is None:
        return None
    sq = pad_to_square(crop)
    inner = size - 2 * margin
    small = np.asarray(Image.fromarray(sq).resize((inner, inner), Image.Resampling.BOX))
    out = np.zeros((size, size), dtype=np.uint8)
    out[margin : margin + inner, margin : margin + inner] = small
    return out


def binarize(img: np.ndarray, threshold: int = 127) -> np.ndarray:
    """Boolean ink mask of a uint8 image (or a stack of images)."""
    return np.asarray(img) > threshold


def binary_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def iou_matrix(masks_a: np.ndarray, masks_b: np.ndarray) -> np.ndarray:
    """Pairwise IoU between two stacks of boolean masks ``[Na, H, W]`` and ``[Nb, H, W]``."""
    a = np.asarray(masks_a, dtype=np.float32).reshape(len(masks_a), -1)
    b = np.asarray(masks_b, dtype=np.float32).reshape(len(masks_b), -1)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.maximum(union, 1e-9), 1.0)
    return iou


def is_near_duplicate(mask: np.ndarray, kept: Sequence[np.ndarray], threshold: float) -> bool:
    """True if ``mask`` has IoU > ``threshold`` with any mask in ``kept``."""
    if len(kept) == 0:
        return False
    return bool((iou_matrix(mask[None], np.stack(kept))[0] > threshold).any())


def dedup_indices(images: np.ndarray, threshold: float = 0.95) -> list[int]:
    """Greedy near-duplicate removal: indices of images kept in order (binary IoU <= thr)."""
    kept: list[int] = []
    masks: list[np.ndarray] = []
    for i, img in enumerate(images):
        m = binarize(img)
        if not is_near_duplicate(m, masks, threshold):
            kept.append(i)
            masks.append(m)
    return kept


def dilate(mask: np.ndarray) -> np.ndarray:
    """Binary dilation of a 2-D mask with a 3x3 square."""
    p = np.pad(np.asarray(mask, dtype=bool), 1)
    h, w = mask.shape
    out = np.zeros((h, w), dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy : dy + h, dx : dx + w]
    return out


def tolerant_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the 1-pixel dilations of two masks: forgives 1-px shifts and stroke-width changes."""
    return binary_iou(dilate(a), dilate(b))


def is_box(mask: np.ndarray, edge: float = 0.95, interior: float = 0.05) -> bool:
    """Whether a mask is a hollow rectangle (a tofu / missing-glyph box).

    True when each side of the ink bounding box is inked over >= ``edge`` of its length
    (checking the outer two pixel lines) and the inside (2 px in from the box) holds less
    than ``interior`` ink.
    """
    m = np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    if rows.size < 6 or cols.size < 6:
        return False
    box = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    sides = (box[:2].any(axis=0), box[-2:].any(axis=0), box[:, :2].any(axis=1),
             box[:, -2:].any(axis=1))
    if min(float(side.mean()) for side in sides) < edge:
        return False
    inside = box[3:-3, 3:-3]
    return inside.size > 0 and float(inside.mean()) < interior


def mean_mask(images: np.ndarray) -> np.ndarray:
    """Mean-thresholded mask of a class: pixels inked in at least half of its renders."""
    return binarize(images).mean(axis=0) >= 0.5


def split_scripts(
    class_counts: dict[str, int],
    seed: int,
    fractions: tuple[float, float, float] = (0.60, 0.15, 0.25),
    min_scripts: int = 5,
    min_eval_classes: int = 40,
    trials: int = 4000,
) -> dict[str, str]:
    """Assign whole scripts to train/val/test, close to ``fractions`` of the classes.

    Seeded random search: each trial shuffles the scripts and fills the splits greedily; the
    trial with the smallest squared deviation from the target fractions among those meeting the
    constraints wins. The constraints are: every split gets >= ``min_scripts`` scripts (lowered
    to ``len(scripts) // 3`` when there are too few scripts) and val and test each hold at least
    ``min_eval_classes`` classes (when that is feasible at all).
    """
    scripts = sorted(class_counts)
    total = sum(class_counts.values())
    need = min(min_scripts, max(1, len(scripts) // 3))
    rng = random.Random(seed)

    def cost(assign: dict[str, str]) -> float | None:
        sizes = [sum(class_counts[s] for s in scripts if assign[s] == name) for name in SPLITS]
        n_scripts = [sum(1 for s in scripts if assign[s] == name) for name in SPLITS]
        if min(n_scripts) < need:
            return None
        penalty = 10.0 if min(sizes[1], sizes[2]) < min_eval_classes else 0.0
        return sum((sz / total - f) ** 2 for sz, f in zip(sizes, fractions)) + penalty

    best: tuple[float, dict[str, str]] | None = None
    for _ in range(trials):
        order = scripts[:]
        rng.shuffle(order)
        cuts = sorted(rng.sample(range(1, len(order)), 2))
        parts = (order[: cuts[0]], order[cuts[0] : cuts[1]], order[cuts[1] :])
        assign = {s: name for p, name in zip(parts, SPLITS) for s in p}
        c = cost(assign)
        if c is not None and (best is None or c < best[0]):
            best = (c, assign)
    if best is None:
        raise ValueError(f"cannot split {len(scripts)} scripts into 3 splits")
    # Local search: single moves and pairwise swaps while they lower the cost.
    improved = True
    while improved:
        improved = False
        cur_cost, cur = best
        moves = [{s: t} for s in scripts for t in SPLITS if cur[s] != t]
        moves += [{a: cur[b], b: cur[a]} for i, a in enumerate(scripts) for b in scripts[i + 1 :]
                  if cur[a] != cur[b]]
        for mv in moves:
            cand = {**cur, **mv}
            c = cost(cand)
            if c is not None and c < cur_cost - 1e-12:
                best = (c, cand)
                improved = True
                break
    return best[1]


# ----------------------------------------------------------------------------------------------
# Unicode helpers
# ----------------------------------------------------------------------------------------------


def char_script(ch: str) -> str | None:
    """Script of a letter/digit from its Unicode name, e.g. 'LATIN', 'GREEK', 'HAN'.

    ASCII digits (names "DIGIT ZERO".."DIGIT NINE", script Common) are counted as LATIN.
    Returns None for characters that are not script letters/digits we keep.
    """
    if "0" <= ch <= "9":
        return "LATIN"
    name = unicodedata.name(ch, "")
    if not name:
        return None
    for prefix in MULTIWORD_SCRIPTS:
        if name.startswith(prefix + " ") or name.startswith(prefix + "-") or name == prefix:
            return SCRIPT_ALIASES.get(prefix, prefix)
    first = name.split(" ")[0]
    if first in NOT_SCRIPTS:
        return None
    return first


def is_candidate_char(ch: str) -> bool:
    """Letters (Lu/Ll/Lo) and decimal digits (Nd) that are NFKC-stable and have a script."""
    if unicodedata.category(ch) not in ("Lu", "Ll", "Lo", "Nd"):
        return False
    if unicodedata.normalize("NFKC", ch) != ch:
        return False
    return char_script(ch) is not None


# ----------------------------------------------------------------------------------------------
# Packages and fonts
# ----------------------------------------------------------------------------------------------


def fetch_packages(packages: Sequence[str], cache: Path) -> dict[str, str]:
    """Download (``apt-get download``) and unpack (``dpkg -x``) packages; return name->version."""
    debs = cache / "debs"
    root = cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(debs.glob(f"{p}_*.deb"))]
    if missing:
        print(f"downloading {len(missing)} packages", file=sys.stderr)
        subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    versions: dict[str, str] = {}
    for p in packages:
        deb = sorted(debs.glob(f"{p}_*.deb"))[-1]
        versions[p] = deb.name.split("_")[1].replace("%3a", ":")
        stamp = root / ".unpacked" / deb.name
        if not stamp.exists():
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
            stamp.parent.mkdir(exist_ok=True)
            stamp.touch()
    return versions


def package_font_files(packages: Sequence[str], cache: Path) -> list[Path]:
    """Font files shipped by the given packages (read from each .deb's file list)."""
    files: list[Path] = []
    for p in packages:
        deb = sorted((cache / "debs").glob(f"{p}_*.deb"))[-1]
        out = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            path = line.split(" ./", 1)[-1].split(" -> ")[0]
            if path.lower().endswith(FONT_EXTS):
                f = cache / "root" / path
                if f.is_file() and not f.is_symlink():
                    files.append(f)
    return sorted(set(files))


@dataclass
class Face:
    """One font face: file, index in a collection, names and usable code points."""

    path: str
    index: int
    family: str
    style: str
    design: str  # family with weight/width/UI words removed: the "design family"
    chars: frozenset[int] = field(repr=False)


STYLE_WORDS = {
    "thin", "hairline", "extralight", "ultralight", "light", "book", "regular", "normal",
    "medium", "semibold", "demibold", "demi", "bold", "extrabold", "ultrabold", "heavy", "black",
    "italic", "oblique", "condensed", "semicondensed", "extracondensed", "ultracondensed",
    "narrow", "wide", "expanded", "ui", "display", "slanted", "extra", "semi", "ultra",
}


SKIP_TABLES = ("CBDT", "sbix", "COLR", "SVG ")  # colour fonts
# Faces left out by name: symbol fonts (letters mapped to symbols/Greek) and a font that draws
# every glyph inside a frame.
SKIP_FAMILY_WORDS = ("symbol", "dingbat", "dedaena block")
# Hairline weights become faint broken strokes at 28 px; they are left out.
SKIP_STYLE_WORDS = ("thin", "hairline", "extralight", "ultralight")


def design_name(family: str) -> str:
    """Design family: lower-cased family name without weight/width/UI words."""
    words = [w for w in family.replace("-", " ").split() if w.lower() not in STYLE_WORDS]
    return " ".join(words).lower() or family.lower()


def _name(font: object, *ids: int) -> str:
    table = font["name"]  # type: ignore[index]
    for i in ids:
        rec = table.getDebugName(i)
        if rec:
            return str(rec).strip()
    return ""


def index_faces(files: Sequence[Path]) -> list[Face]:
    """Read every face's names and cmap with fontTools; drop duplicate (family, style) pairs.

    A code point is usable if it maps to a glyph other than ``.notdef`` and that glyph is not
    shared by more than 8 code points (fallback "last resort" glyphs).
    """
    from fontTools.ttLib import TTCollection, TTFont

    faces: list[Face] = []
    seen: set[tuple[str, str]] = set()
    for f in files:
        try:
            if f.suffix.lower() in (".ttc", ".otc"):
                fonts = list(TTCollection(str(f), lazy=True).fonts)
            else:
                fonts = [TTFont(str(f), lazy=True)]
        except Exception as exc:  # broken file: skip
            print(f"skip {f.name}: {exc}", file=sys.stderr)
            continue
        for idx, font in enumerate(fonts):
            try:
                family = _name(font, 16, 1)
                style = _name(font, 17, 2) or "Regular"
                cmap = font.getBestCmap() or {}
            except Exception as exc:
                print(f"skip {f.name}#{idx}: {exc}", file=sys.stderr)
                continue
            key = (family.lower(), style.lower())
            if any(w in key[0] for w in SKIP_FAMILY_WORDS) or any(
                w in (key[0] + " " + key[1]).replace("-", "").split() for w in SKIP_STYLE_WORDS
            ):
                continue
            if not family or key in seen or any(t in font for t in SKIP_TABLES):
                continue
            if any(t.platformID == 3 and t.platEncID == 0 for t in font["cmap"].tables):
                continue  # symbol-encoded font: letters map to symbols
            seen.add(key)
            uses: dict[str, int] = defaultdict(int)
            for g in cmap.values():
                uses[g] += 1
            chars = frozenset(
                cp for cp, g in cmap.items() if g != ".notdef" and uses[g] <= 8 and cp < 0x110000
            )
            faces.append(Face(str(f), idx, family, style, design_name(family), chars))
    return faces


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

RENDER_PX = 96
TOFU_PROBES = (0x0378, 0x0379, 0x0380, 0x0381, 0x05FF, 0x0E7F)


class Renderer:
    """Renders single code points with Pillow's basic layout, caching open fonts (LRU)."""

    def __init__(self, size: int, render_px: int = RENDER_PX, max_open: int = 128) -> None:
        self.size = size
        self.render_px = render_px
        self.max_open = max_open
        self._fonts: dict[tuple[str, int], object] = {}
        self._tofu: dict[tuple[str, int], list[np.ndarray]] = {}
        self._glyphs: dict[tuple[str, int, str], np.ndarray | None] = {}

    def _font(self, face: Face) -> object:
        from PIL import ImageFont

        key = (face.path, face.index)
        font = self._fonts.pop(key, None)
        if font is None:
            font = ImageFont.truetype(face.path, self.render_px, index=face.index,
                                      layout_engine=ImageFont.Layout.BASIC)
            if len(self._fonts) >= self.max_open:
                self._fonts.pop(next(iter(self._fonts)))
        self._fonts[key] = font
        return font

    def raw(self, face: Face, ch: str) -> np.ndarray | None:
        """Render ``ch`` large; None when the font raises or draws nothing."""
        from PIL import Image, ImageDraw

        try:
            font = self._font(face)
            left, top, right, bottom = font.getbbox(ch)  # type: ignore[attr-defined]
            w, h = right - left, bottom - top
            if w <= 0 or h <= 0 or w > 8 * self.render_px or h > 8 * self.render_px:
                return None
            img = Image.new("L", (w + 4, h + 4), 0)
            ImageDraw.Draw(img).text((2 - left, 2 - top), ch, font=font, fill=255)
        except Exception:
            return None
        arr = np.asarray(img)
        return arr if arr.max() >= 128 else None

    def tofu(self, face: Face) -> list[np.ndarray]:
        """Normalised renders of code points the face does not map (its .notdef glyph)."""
        key = (face.path, face.index)
        if key not in self._tofu:
            refs = []
            for cp in TOFU_PROBES:
                if cp not in face.chars:
                    raw = self.raw(face, chr(cp))
                    g = None if raw is None else normalize_glyph(raw, self.size)
                    if g is not None:
                        refs.append(g)
                    break
            self._tofu[key] = refs
        return self._tofu[key]

    def glyph(self, face: Face, ch: str) -> np.ndarray | None:
        """Final ``size x size`` render, or None if blank, failed, too small, or tofu (cached)."""
        key = (face.path, face.index, ch)
        if key not in self._glyphs:
            self._glyphs[key] = self._glyph(face, ch)
        return self._glyphs[key]

    def _glyph(self, face: Face, ch: str) -> np.ndarray | None:
        raw = self.raw(face, ch)
        if raw is None:
            return None
        crop = crop_to_ink(raw, 32)
        if crop is None or max(crop.shape) < self.render_px // 16:
            return None
        g = normalize_glyph(raw, self.size)
        if g is None or binarize(g).sum() < 4 or is_box(binarize(g)):
            return None
        for ref in self.tofu(face):
            if binary_iou(binarize(g), binarize(ref)) > 0.9:
                return None
        return g


@dataclass
class ClassRenders:
    """Kept renders of one character."""

    char: str
    script: str
    images: np.ndarray  # [n, size, size] uint8, in round-robin family order
    faces: list[int]  # indices into the face list


def face_order(faces: Sequence[Face], seed: int) -> list[int]:
    """Global face visiting order: round-robin over design families (both orders seeded)."""
    rng = random.Random(seed)
    by_design: dict[str, list[int]] = defaultdict(list)
    for i, f in enumerate(faces):
        by_design[f.design].append(i)
    designs = sorted(by_design)
    rng.shuffle(designs)
    queues = []
    for d in designs:
        q = sorted(by_design[d], key=lambda i: (faces[i].family, faces[i].style))
        rng.shuffle(q)
        queues.append(q)
    order: list[int] = []
    depth = 0
    while len(order) < len(faces):
        for q in queues:
            if depth < len(q):
                order.append(q[depth])
        depth += 1
    return order


def render_class(
    ch: str,
    script: str,
    covering: Sequence[int],
    faces: Sequence[Face],
    renderer: Renderer,
    want: int,
    dup_iou: float,
) -> ClassRenders:
    """Render ``ch`` in the covering faces (given in visiting order) until ``want`` are kept."""
    imgs: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    kept_faces: list[int] = []
    for fi in covering:
        g = renderer.glyph(faces[fi], ch)
        if g is None:
            continue
        m = binarize(g)
        if is_near_duplicate(m, masks, dup_iou):
            continue
        imgs.append(g)
        masks.append(m)
        kept_faces.append(fi)
        if len(imgs) >= want:
            break
    size = renderer.size
    arr = np.stack(imgs) if imgs else np.zeros((0, size, size), np.uint8)
    return ClassRenders(ch, script, arr, kept_faces)


def is_case_pair(a: str, b: str) -> bool:
    """Whether ``a`` and ``b`` are the upper- and lower-case forms of one letter."""
    return a != b and (a.lower() == b or a.upper() == b or b.lower() == a or b.upper() == a)


def pair_similarity(
    a: str,
    b: str,
    cover_a: Sequence[int],
    cover_b: Sequence[int],
    faces: Sequence[Face],
    renderer: Renderer,
    n: int = 12,
) -> tuple[int, float]:
    """Median tolerant IoU of ``a`` and ``b`` rendered in the same faces.

    Uses up to ``n`` faces covering both characters (in visiting order); returns the number
    of faces compared and the median of :func:`tolerant_iou` (nan when none).
    """
    in_b = set(cover_b)
    scores: list[float] = []
    for fi in cover_a:
        if fi not in in_b:
            continue
        ga, gb = renderer.glyph(faces[fi], a), renderer.glyph(faces[fi], b)
        if ga is None or gb is None:
            continue
        scores.append(tolerant_iou(binarize(ga), binarize(gb)))
        if len(scores) >= n:
            break
    return len(scores), float(np.median(scores)) if scores else float("nan")


# ----------------------------------------------------------------------------------------------
# Build
# ----------------------------------------------------------------------------------------------

SCRIPT_PRIORITY = ("LATIN", "GREEK", "CYRILLIC")


def build(args: argparse.Namespace) -> None:
    """Run the whole pipeline and write ``args.out``."""
    packages = PRESETS[args.packages[0]] if len(args.packages) == 1 and args.packages[0] in \
        PRESETS else list(args.packages)
    cache = Path(args.fonts_dir)
    versions = fetch_packages(packages, cache)
    files = package_font_files(packages, cache)
    key = BUILDER_VERSION + repr(sorted((str(f), f.stat().st_size) for f in files))
    idx_path = cache / "face_index.pkl"
    faces: list[Face] | None = None
    if idx_path.exists():
        with open(idx_path, "rb") as fh:
            stored_key, stored = pickle.load(fh)
        faces = [Face(*t) for t in stored] if stored_key == key else None
    if faces is None:
        print(f"indexing {len(files)} font files", file=sys.stderr)
        faces = index_faces(files)
        with open(idx_path, "wb") as fh:
            pickle.dump((key, [astuple(f) for f in faces]), fh)
    print(f"{len(faces)} faces from {len(files)} files", file=sys.stderr)

    order = face_order(faces, args.seed)
    rank = {fi: r for r, fi in enumerate(order)}
    coverage: dict[int, list[int]] = defaultdict(list)
    for fi in order:
        for cp in faces[fi].chars:
            coverage[cp].append(fi)
    by_script: dict[str, list[str]] = defaultdict(list)
    for cp, cover in coverage.items():
        ch = chr(cp)
        if len(cover) >= args.min_per_class and is_candidate_char(ch):
            by_script[char_script(ch)].append(ch)  # type: ignore[index]

    rng = random.Random(args.seed)
    renderer = Renderer(args.size)
    want = max(args.per_class, args.min_per_class)

    def ordered_cover(c: str) -> list[int]:
        return sorted(coverage[ord(c)], key=rank.__getitem__)

    # Scripts in a fixed priority order (Latin, Greek, Cyrillic first: they win homoglyph
    # clashes), then by descending number of candidates.
    script_order = [s for s in SCRIPT_PRIORITY if s in by_script] + sorted(
        (s for s in by_script if s not in SCRIPT_PRIORITY), key=lambda s: (-len(by_script[s]), s))
    kept: list[ClassRenders] = []
    kept_masks: list[np.ndarray] = []
    dropped: list[tuple[str, str, str, float]] = []
    per_script: dict[str, int] = defaultdict(int)
    for script in script_order:
        chars = sorted(by_script[script])
        tiebreak = {c: rng.random() for c in chars}

        def prio(c: str, tb: dict[str, float] = tiebreak) -> tuple[int, int, float]:
            decomposed = unicodedata.normalize("NFD", c) != c
            families = len({faces[fi].design for fi in coverage[ord(c)]})
            return (int(decomposed), -families, tb[c])

        chars.sort(key=prio)
        n_rendered = 0
        for ch in chars:
            if per_script[script] >= args.max_classes_per_script:
                break
            cr = render_class(ch, script, ordered_cover(ch), faces, renderer, want, args.dup_iou)
            n_designs = len({faces[fi].design for fi in cr.faces})
            if len(cr.faces) < want or n_designs < args.min_families:
                continue
            n_rendered += 1
            # Greedy confusable removal against every class kept so far (any script).
            mm = dilate(mean_mask(cr.images[: args.per_class]))
            clash = None
            if kept:
                iou = iou_matrix(mm[None], np.stack(kept_masks))[0]
                close = [j for j in np.argsort(-iou)[:10] if iou[j] > 0.5]
                for j in close:
                    other = kept[j]
                    n, sim = pair_similarity(ch, other.char, ordered_cover(ch),
                                             ordered_cover(other.char), faces, renderer)
                    if n < 3:  # too few shared faces: compare the classes' mean masks
                        sim = binary_iou(mm, kept_masks[j])
                    thr = args.case_iou if is_case_pair(ch, other.char) else args.confusable_iou
                    if sim > thr:
                        clash = (ch, other.char, other.script, sim)
                        break
            if clash is not None:
                dropped.append(clash)
                continue
            kept.append(cr)
            kept_masks.append(mm)
            per_script[script] += 1
        print(f"{script}: kept {per_script[script]} of {n_rendered} rendered classes "
              f"({len(chars)} candidates)", file=sys.stderr)
    for ch, other, other_script, sim in dropped:
        print(f"confusable: drop {ch!r} (U+{ord(ch):04X}) ~ {other!r} ({other_script}) "
              f"{sim:.2f}", file=sys.stderr)
    small = {s for s, n in per_script.items() if n < args.min_classes_per_script}
    kept = [cr for cr in kept if cr.script not in small]
    counts = defaultdict(int)
    for cr in kept:
        counts[cr.script] += 1
    assignment = split_scripts(dict(counts), args.seed)
    split_rank = {s: i for i, s in enumerate(SPLITS)}
    kept.sort(key=lambda cr: (split_rank[assignment[cr.script]], cr.script, cr.char))

    images, labels, fonts_used = [], [], []
    for label, cr in enumerate(kept):
        # take the first per_class renders: they follow the round-robin design order
        images.append(cr.images[: args.per_class])
        labels += [label] * args.per_class
        fonts_used += [f"{faces[fi].family} {faces[fi].style}" for fi in
                       cr.faces[: args.per_class]]
    meta = {
        "name": "glyphs",
        "builder_version": BUILDER_VERSION,
        "date": _dt.date.today().isoformat(),
        "size": args.size,
        "seed": args.seed,
        "per_class": args.per_class,
        "min_per_class": args.min_per_class,
        "min_families": args.min_families,
        "max_classes_per_script": args.max_classes_per_script,
        "dup_iou": args.dup_iou,
        "confusable_iou": args.confusable_iou,
        "case_iou": args.case_iou,
        "packages": versions,
        "n_faces": len(faces),
        "n_classes": len(kept),
        "n_samples": len(labels),
        "n_scripts": len(counts),
        "split_classes": {s: sum(1 for cr in kept if assignment[cr.script] == s) for s in SPLITS},
        "split_scripts": {s: sorted(k for k, v in assignment.items() if v == s) for s in SPLITS},
        "script_classes": dict(sorted(counts.items())),
        "dropped_confusable": [f"{a}~{b}" for a, b, _, _ in dropped],
        "dropped_scripts_too_small": sorted(small),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.concatenate(images).astype(np.uint8),
        labels=np.asarray(labels, dtype=np.int32),
        class_chars=np.asarray([cr.char for cr in kept], dtype=str),
        class_scripts=np.asarray([cr.script for cr in kept], dtype=str),
        class_split=np.asarray([assignment[cr.script] for cr in kept], dtype=str),
        sample_fonts=np.asarray(fonts_used, dtype=str),
        meta=np.asarray(json.dumps(meta, ensure_ascii=False)),
    )
    print(json.dumps({k: meta[k] for k in ("n_classes", "n_samples", "n_scripts",
                                            "split_classes", "script_classes")}, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)


def preview(npz: str | os.PathLike, png: str | os.PathLike, n_classes: int = 16,
            n_fonts: int = 10, seed: int = 0, scale: int = 2) -> None:
    """Save a grid: ``n_classes`` random classes (rows) x ``n_fonts`` samples (columns)."""
    from PIL import Image

    with np.load(npz) as d:
        images, labels = d["images"], d["labels"]
    rng = np.random.default_rng(seed)
    classes = np.sort(rng.choice(labels.max() + 1, size=n_classes, replace=False))
    s = images.shape[1] + 1
    grid = np.full((n_classes * s + 1, n_fonts * s + 1), 90, dtype=np.uint8)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)[:n_fonts]
        for k, i in enumerate(idx):
            grid[1 + r * s : (r + 1) * s, 1 + k * s : (k + 1) * s] = images[i]
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                       Image.Resampling.NEAREST)
    img.save(png, optimize=True)
    print(f"preview of classes {classes.tolist()} -> {png}", file=sys.stderr)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fonts-dir", default=".cache/fonts",
                   help="cache folder for .debs, unpacked files and the face index")
    p.add_argument("--packages", nargs="+", default=["default"],
                   help=f"a preset ({'|'.join(PRESETS)}) or explicit Debian package names")
    p.add_argument("--out", default="src/losslab/lab/data/glyphs.npz")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--per-class", type=int, default=20)
    p.add_argument("--min-per-class", type=int, default=20,
                   help="minimum distinct renders for a class to be kept")
    p.add_argument("--min-families", type=int, default=2,
                   help="minimum distinct design families among a class's kept renders")
    p.add_argument("--max-classes-per-script", type=int, default=60)
    p.add_argument("--min-classes-per-script", type=int, default=10)
    p.add_argument("--dup-iou", type=float, default=0.95)
    p.add_argument("--confusable-iou", type=float, default=0.8,
                   help="drop a class whose median tolerant IoU with a kept class (rendered "
                        "in the same faces) exceeds this")
    p.add_argument("--case-iou", type=float, default=0.75,
                   help="the same threshold for upper/lower-case pairs of one letter")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", metavar="PNG",
                   help="only write a preview grid of --out (must exist) to PNG")
    return p.parse_args(None if argv is None else list(argv))


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point."""
    args = parse_args(argv)
    if args.preview:
        preview(args.out, args.preview, seed=args.seed)
    else:
        build(args)


if __name__ == "__main__":
    main()
