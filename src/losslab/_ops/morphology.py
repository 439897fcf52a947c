"""Morphology for segmentation losses and metrics: the soft (differentiable) skeleton of clDice,
and the non-differentiable maps computed from masks on the CPU (Euclidean distance maps from
scipy, skeletons from scikit-image).

Masks are ``[N, *spatial]`` (2-D or 3-D spatial); the CPU maps are computed per image with
numpy and returned as tensors on the input's device and in the requested dtype. scipy and
scikit-image are optional dependencies (the ``seg`` extra): a loss or metric that needs one
raises an ``ImportError`` saying which package to install.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "boundary_mask",
    "distance_to_boundary",
    "require",
    "signed_distance",
    "skeletonize_masks",
    "soft_dilate",
    "soft_erode",
    "soft_skeleton",
    "tubed_skeleton",
]


def require(module: str, package: str) -> Any:
    """Import ``module`` or raise an ``ImportError`` naming the package to install."""
    try:
        return importlib.import_module(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"this needs the optional package {package!r} (pip install {package}, or the "
            "losslab 'seg' extra)") from err


# --------------------------------------------------------------------------------------------
# Soft skeleton (clDice, Shit et al., arXiv 2003.07311, section 3.2)
# --------------------------------------------------------------------------------------------


def _check_spatial(x: Tensor) -> int:
    nd = x.ndim - 2
    if nd not in (2, 3):
        raise ValueError(f"soft morphology needs [N, C, H, W] or [N, C, D, H, W], got "
                         f"{tuple(x.shape)}")
    return nd


def soft_erode(x: Tensor) -> Tensor:
    """Soft erosion: the minimum over the 4-neighbourhood (6 in 3-D) and the pixel itself,
    as a min of axis-aligned 3-pixel min-pools (``-maxpool(-x)``), borders padded with the
    pixel itself (max-pool padding). ``x``: ``[N, C, *spatial]``."""
    nd = _check_spatial(x)
    pool = F.max_pool2d if nd == 2 else F.max_pool3d
    out: Tensor | None = None
    for axis in range(nd):
        k = [1] * nd
        p = [0] * nd
        k[axis], p[axis] = 3, 1
        e = -pool(-x, tuple(k), (1,) * nd, tuple(p))
        out = e if out is None else torch.minimum(out, e)
    assert out is not None
    return out


def soft_dilate(x: Tensor) -> Tensor:
    """Soft dilation: the maximum over the 3x3 (3x3x3) neighbourhood."""
    nd = _check_spatial(x)
    pool = F.max_pool2d if nd == 2 else F.max_pool3d
    return pool(x, (3,) * nd, (1,) * nd, (1,) * nd)


def soft_skeleton(x: Tensor, iterations: int) -> Tensor:
    r"""Soft skeleton of probability maps ``x[N, C, *spatial]`` (clDice, Algorithm 1).

    .. math::
        S \leftarrow \mathrm{relu}(I - \mathrm{open}(I));\quad \text{repeat } k \text{ times: }
        I \leftarrow \mathrm{erode}(I),\ \delta = \mathrm{relu}(I - \mathrm{open}(I)),\
        S \leftarrow S + \mathrm{relu}(\delta - S \delta)

    with ``open = dilate(erode(.))`` (:func:`soft_erode`, :func:`soft_dilate`). On a 0/1 mask it
    is a 0/1 set inside the mask; ``iterations`` should exceed the half-width of the thickest
    structure.
    """
    img = x
    skel = F.relu(img - soft_dilate(soft_erode(img)))
    for _ in range(iterations):
        img = soft_erode(img)
        delta = F.relu(img - soft_dilate(soft_erode(img)))
        skel = skel + F.relu(delta - skel * delta)
    return skel


# --------------------------------------------------------------------------------------------
# CPU maps from masks (scipy / scikit-image)
# --------------------------------------------------------------------------------------------


def _numpy_masks(mask: Tensor) -> np.ndarray:
    return mask.detach().to("cpu", torch.bool).numpy()


def _back(arr: np.ndarray, like: Tensor, dtype: torch.dtype) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device=like.device, dtype=dtype)


# Under ``torch.compile`` the maps are ``torch.library`` custom operators (``losslab::...``):
# opaque to the compiler, which calls the numpy code at run time instead of graph-breaking on
# it, with shape-only fake implementations (the output has the mask's shape). Eager calls run
# the same numpy functions directly (the operator dispatch costs ~50 us a call, 10% of the
# transform of a small batch). They take masks (no gradient: nothing differentiable reaches
# them) and return float64 maps (bool for the skeleton) on the mask's device; the callers cast.


def _distance_to_boundary_np(mask: Tensor) -> Tensor:
    ndi = require("scipy.ndimage", "scipy")
    m = _numpy_masks(mask)
    out = np.zeros(m.shape, dtype=np.float64)
    for n in range(m.shape[0]):
        if m[n].any() and not m[n].all():
            out[n] = ndi.distance_transform_edt(m[n]) + ndi.distance_transform_edt(~m[n])
    return _back(out, mask, torch.float64)


def _signed_distance_np(mask: Tensor) -> Tensor:
    ndi = require("scipy.ndimage", "scipy")
    m = _numpy_masks(mask)
    out = np.zeros(m.shape, dtype=np.float64)
    for n in range(m.shape[0]):
        if m[n].any() and not m[n].all():
            out[n] = (ndi.distance_transform_edt(~m[n]) * ~m[n]
                      - (ndi.distance_transform_edt(m[n]) - 1) * m[n])
    return _back(out, mask, torch.float64)


def _float64_like(mask: Tensor) -> Tensor:
    return mask.new_empty(mask.shape, dtype=torch.float64)


distance_to_boundary_op = torch.library.custom_op(
    "losslab::distance_to_boundary", mutates_args=())(_distance_to_boundary_np)
distance_to_boundary_op.register_fake(_float64_like)
signed_distance_op = torch.library.custom_op(
    "losslab::signed_distance", mutates_args=())(_signed_distance_np)
signed_distance_op.register_fake(_float64_like)


def distance_to_boundary(mask: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Unsigned distance of each pixel to the other region: inside the mask the Euclidean
    distance to the nearest pixel outside, outside the distance to the nearest pixel inside
    (so pixels next to the boundary are at distance 1). A mask that is empty or full has
    distance 0 everywhere (there is no boundary). ``mask``: ``[N, *spatial]`` bool; no
    gradient. Computed in float64 and cast to ``dtype``; under ``torch.compile`` by the
    operator ``losslab::distance_to_boundary``."""
    fn = distance_to_boundary_op if torch.compiler.is_compiling() else _distance_to_boundary_np
    return fn(mask.detach()).to(dtype)


def signed_distance(mask: Tensor, *, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Signed distance map of the boundary loss (Kervadec et al., arXiv 1812.07032, and its
    code's ``one_hot2dist``): outside the mask the distance to the nearest mask pixel
    (:math:`> 0`), inside minus (the distance to the nearest outside pixel - 1)
    (:math:`\le 0`, 0 on the inner boundary). An empty mask gives 0 everywhere (as the
    official code); so does a full mask (no boundary in the image; the official code leaves
    that case to scipy's transform of a mask without background). No gradient; computed in
    float64 and cast to ``dtype``; under ``torch.compile`` by the operator
    ``losslab::signed_distance``."""
    fn = signed_distance_op if torch.compiler.is_compiling() else _signed_distance_np
    return fn(mask.detach()).to(dtype)


def skeletonize_masks(mask: Tensor) -> Tensor:
    """Morphological skeleton (scikit-image ``skeletonize``: Zhang's method in 2-D, Lee's in
    3-D) of each mask of ``mask[N, *spatial]``; bool, same device."""
    morph = require("skimage.morphology", "scikit-image")
    m = _numpy_masks(mask)
    out = np.zeros(m.shape, dtype=bool)
    for n in range(m.shape[0]):
        if m[n].any():
            out[n] = morph.skeletonize(m[n]) > 0
    return torch.from_numpy(out).to(mask.device)


def _tubed_skeleton_np(mask: Tensor, tube: bool) -> Tensor:
    skel = skeletonize_masks(mask)
    if not tube:
        return skel
    ndi = require("scipy.ndimage", "scipy")
    s = skel.cpu().numpy()
    footprint = ndi.iterate_structure(ndi.generate_binary_structure(s.ndim - 1, 1), 2)
    out = np.stack([ndi.binary_dilation(s[n], structure=footprint) for n in range(s.shape[0])]
                   ) if s.shape[0] else s
    return torch.from_numpy(out.astype(bool)).to(mask.device)


def _bool_like(mask: Tensor, tube: bool) -> Tensor:
    return mask.new_empty(mask.shape, dtype=torch.bool)


tubed_skeleton_op = torch.library.custom_op(
    "losslab::tubed_skeleton", mutates_args=())(_tubed_skeleton_np)
tubed_skeleton_op.register_fake(_bool_like)


def tubed_skeleton(mask: Tensor, *, tube: bool = True) -> Tensor:
    """The tubed skeleton of Skeleton Recall (arXiv 2404.03010, section 3.1): the skeleton of
    each mask dilated twice with the cross-shaped (connectivity-1) footprint, i.e. a tube of
    radius 2 in the L1 metric (``tube=False``: the bare skeleton). Not restricted to the mask;
    the caller intersects it with the class masks. ``mask``: ``[N, *spatial]`` bool; no
    gradient. Under ``torch.compile``, the operator ``losslab::tubed_skeleton``."""
    fn = tubed_skeleton_op if torch.compiler.is_compiling() else _tubed_skeleton_np
    return fn(mask.detach(), tube)


def boundary_mask(mask: Tensor) -> Tensor:
    """Inner boundary of each mask: mask pixels with a 4-neighbour (6 in 3-D) outside the mask
    or beyond the image border. ``mask``: ``[N, *spatial]`` bool."""
    m = mask.to(torch.float32).unsqueeze(1)
    nd = m.ndim - 2
    inner = soft_erode(F.pad(m, (1, 1) * nd, value=0.0))
    inner = inner[(slice(None), slice(None), *[slice(1, -1)] * nd)]
    return mask & (inner[:, 0] < 0.5)
