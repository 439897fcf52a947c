r"""Deep hashing with one cosine-similarity objective (OrthoHash; family ``metric-learning``,
kind ``embeddings``).

OrthoHash (Hoe, Ng, Ng, Chan, Chan, Ren, "One Loss for All: Deep Hashing with a Single Cosine
Similarity based Learning Objective", NeurIPS 2021, arXiv 2109.14449) gives each class a fixed
binary target code :math:`o_c \in \{-1, +1\}^K` (random Bernoulli codes are nearly orthogonal
for large :math:`K`) and trains the continuous codes :math:`v` of the network with a margin
softmax over the cosines :math:`\cos(v, o_c)`: maximising the cosine to the class's code
maximises the agreement of :math:`\operatorname{sign}(v)` with it (the Hamming distance is
:math:`\frac K2 (1 - \cos(\operatorname{sign} v, o_c))`), so the one term does both
classification and quantisation; an explicit quantisation term is optional (off by default).
Retrieval ranks database codes by Hamming distance of :math:`\operatorname{sign}(v)`.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from losslab._core import (
    LossModule,
    Reduction,
    check_labels,
    check_matrix,
    check_same_device,
    compute_dtype,
    reduce,
    require,
    zero_loss,
)
from losslab._hparams import Choice, Int, Real, hparams
from losslab.distances import normalize_rows
from losslab.registry import register

__all__ = ["OrthoHashLoss", "hashing_codebook", "orthohash_loss"]

ORTHOHASH = ("One Loss for All: Deep Hashing with a Single Cosine Similarity based Learning "
             "Objective")
CODEBOOKS = ("bernoulli", "separated")


def hashing_codebook(num_classes: int, code_bits: int, *, method: str = "bernoulli",
                     seed: int = 0, min_distance: float = 0.61, max_tries: int = 10_000,
                     reduce_by: float = 0.01, floor: float = 0.2) -> Tensor:
    r"""``[num_classes, code_bits]`` target codes in :math:`\{-1, +1\}` (float32, CPU).

    ``method="bernoulli"``: each bit :math:`\pm 1` with probability 1/2 (the official default
    ``codebook_generation = 'B'``). ``"separated"``: the official ``get_codebook`` search -- draw
    random codes and accept one only if its normalised Hamming distance to every accepted code
    is at least ``min_distance`` (0.61), lowering the bound by ``reduce_by`` after
    ``max_tries`` rejections, down to ``floor`` (else ``ValueError``); the accepted codes are
    then shuffled.
    """
    _check_codebook(num_classes=num_classes, code_bits=code_bits, method=method, seed=seed,
                    min_distance=min_distance, max_tries=max_tries, reduce_by=reduce_by,
                    floor=floor)
    g = torch.Generator().manual_seed(seed)
    if method == "bernoulli":
        return torch.randint(0, 2, (num_classes, code_bits), generator=g).float() * 2.0 - 1.0
    codes: list[Tensor] = []
    bound, rejected = min_distance, 0
    while len(codes) < num_classes:
        c = torch.randint(0, 2, (code_bits,), generator=g).float() * 2.0 - 1.0
        if all(0.5 * (code_bits - float(c @ o)) / code_bits >= bound for o in codes):
            codes.append(c)
            continue
        rejected += 1
        if rejected >= max_tries:
            rejected, bound = 0, bound - reduce_by
            if bound < floor:
                raise ValueError(f"cannot find {num_classes} codes of {code_bits} bits with "
                                 f"normalised Hamming distance >= {floor}")
    book = torch.stack(codes)
    return book[torch.randperm(num_classes, generator=g)]


_check_codebook = hparams(num_classes=Int(ge=1), code_bits=Int(ge=1), method=Choice(*CODEBOOKS),
                          seed=Int(), min_distance=Real(gt=0, le=1), max_tries=Int(ge=1),
                          reduce_by=Real(gt=0), floor=Real(gt=0, le=1))


def orthohash_loss(
    embeddings: Tensor,
    labels: Tensor,
    codebook: Tensor,
    *,
    scale: float = 8.0,
    margin: float = 0.2,
    margin_type: Literal["cos", "arc"] = "cos",
    quantization: float = 0.0,
    quantization_type: Literal["cs", "l1", "l2"] = "cs",
    ref_embeddings: Tensor | None = None,
    ref_labels: Tensor | None = None,
    indices: object = None,
    reduction: Reduction = "mean",
) -> Tensor:
    r"""OrthoHash: margin softmax over the cosines of the codes to fixed binary class codes.

    .. math::
        \ell_i = -\log \frac{e^{s(\cos\theta_{i y_i} - m)}}{e^{s(\cos\theta_{i y_i} - m)} +
        \sum_{c \ne y_i} e^{s \cos\theta_{ic}}} + \lambda_q\, q_i, \qquad
        \cos\theta_{ic} = \frac{v_i \cdot o_c}{\lVert v_i \rVert \lVert o_c \rVert}

    with the additive cosine margin (``margin_type="cos"``; ``"arc"`` uses
    :math:`\cos(\theta_{i y_i} + m)`, the angle from ``acos`` of the cosine clamped to
    :math:`\pm 0.99999` as the official code) and the optional quantisation term
    :math:`q_i` between :math:`v_i` and :math:`\operatorname{sign}(v_i)` (a constant):
    ``"cs"`` :math:`1 - \cos(v_i, \operatorname{sign} v_i)`, ``"l1"`` the mean of
    :math:`|v - \operatorname{sign} v|` over the bits, ``"l2"`` the mean of the squares.

    Args:
        embeddings: ``[N, K]`` continuous codes :math:`v` (the hash layer's output, before
            the sign). labels: ``[N]`` class ids in ``[0, C)``.
        codebook: ``[C, K]`` target codes :math:`o_c` (:func:`hashing_codebook`), constants.
        scale: :math:`s > 0` (default 8, the official ``OrthoHashLoss``).
        margin: :math:`m \ge 0` (default 0.2, the same).
        margin_type: ``"cos"`` (default) or ``"arc"``.
        quantization: :math:`\lambda_q \ge 0` (default 0: the paper's point is that the cosine
            term alone quantises; the official code's ``quan=0``).
        quantization_type: ``"cs"`` (default, official), ``"l1"`` or ``"l2"``.
        ref_embeddings, ref_labels, indices: not supported (``ValueError``): the loss compares
            codes with fixed class codes.
        reduction: ``"mean"`` over samples (both terms, as the official code), ``"sum"``,
            ``"none"`` (``[N]``).

    Paper: Hoe et al., "One Loss for All: Deep Hashing with a Single Cosine Similarity based
    Learning Objective", arXiv 2109.14449 (defaults from the official ``OrthoHashLoss`` and
    training script; the single-label form -- the official multi-label variants are not here).
    """
    _check_orthohash(scale=scale, margin=margin, margin_type=margin_type,
                     quantization=quantization, quantization_type=quantization_type)
    check_matrix("embeddings", embeddings)
    check_matrix("codebook", codebook, dim=embeddings.shape[1])
    labels = check_labels("labels", labels, embeddings.shape[0], of="embeddings")
    check_same_device(embeddings=embeddings, labels=labels, codebook=codebook)
    if ref_embeddings is not None or ref_labels is not None or indices is not None:
        raise ValueError("orthohash compares codes with fixed class codes: ref_embeddings, "
                         "ref_labels and indices= are not supported")
    n_cls = codebook.shape[0]
    require((labels >= 0) & (labels < n_cls),
            lambda: f"labels must lie in [0, {n_cls}) (the rows of codebook), got values in "
                    f"[{int(labels.min())}, {int(labels.max())}]")
    dt = compute_dtype(embeddings.dtype)
    v = embeddings.to(dt)
    cos = normalize_rows(v) @ normalize_rows(codebook.to(dt)).T
    target = F.one_hot(labels, n_cls).to(dt)
    if margin_type == "cos":
        logits = scale * (cos - margin * target)
    else:
        theta = torch.acos(cos.clamp(-0.99999, 0.99999))
        logits = scale * torch.cos(theta + margin * target)
    per = F.cross_entropy(logits, labels, reduction="none")
    if quantization > 0:
        b = v.detach().sign()
        if quantization_type == "cs":
            q = 1.0 - F.cosine_similarity(v, b, dim=1)
        elif quantization_type == "l1":
            q = (v - b).abs().mean(1)
        else:
            q = (v - b).pow(2).mean(1)
        per = per + quantization * q
    out = reduce(per, reduction)
    if reduction != "none":
        out = out + zero_loss(embeddings, codebook)
    return out


_check_orthohash = hparams(scale=Real(gt=0), margin=Real(ge=0), margin_type=Choice("cos", "arc"),
                           quantization=Real(ge=0), quantization_type=Choice("cs", "l1", "l2"))


@register(
    "orthohash",
    family="metric-learning",
    kind="embeddings",
    paper=ORTHOHASH,
    arxiv="2109.14449",
    summary="CE(s (cos(v, o_c) - m [c = y])) to fixed +-1 class codes o_c; s=8, m=0.2",
    example_hparams={"num_classes": 4, "embedding_dim": 5},
)
class OrthoHashLoss(LossModule, function=orthohash_loss,
                    check=_check_orthohash | hparams(num_classes=Int(ge=1), embedding_dim=Int(ge=1),
                                                     codebook_method=Choice(*CODEBOOKS),
                                                     seed=Int())):
    """Module form of :func:`orthohash_loss`: draws the target codes once at construction
    (:func:`hashing_codebook` of ``embedding_dim`` bits, with ``codebook_method`` and
    ``seed``) and keeps them in the
    ``codebook`` buffer (saved by ``state_dict``; retrieval needs the same codes)."""

    module_options = (
        inspect.Parameter("num_classes", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("embedding_dim", inspect.Parameter.KEYWORD_ONLY, annotation="int"),
        inspect.Parameter("codebook_method", inspect.Parameter.KEYWORD_ONLY,
                          default="bernoulli", annotation="str"),
        inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0, annotation="int"),
    )
    config: dict[str, Any]
    codebook: Tensor

    def configure(self, *, num_classes: int, embedding_dim: int,
                  codebook_method: str = "bernoulli", seed: int = 0) -> None:
        check = type(self).check
        if check is not None:
            check(num_classes=num_classes, embedding_dim=embedding_dim,
                  codebook_method=codebook_method, seed=seed)
        self.config = {"num_classes": int(num_classes), "embedding_dim": int(embedding_dim),
                       "codebook_method": codebook_method, "seed": int(seed)}
        self.register_buffer("codebook", hashing_codebook(
            int(num_classes), int(embedding_dim), method=codebook_method, seed=int(seed)))

    def forward(self, embeddings: Tensor, labels: Tensor, *, ref_embeddings: Tensor | None = None,
                ref_labels: Tensor | None = None, indices: object = None) -> Tensor:
        """The loss against this module's target codes."""
        return type(self).function(embeddings, labels, self.codebook,
                                   ref_embeddings=ref_embeddings, ref_labels=ref_labels,
                                   indices=indices, **self.call_kwargs())

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in {**self.config, **self.hparams}.items())
