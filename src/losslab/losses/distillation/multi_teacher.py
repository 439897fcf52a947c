r"""Multi-teacher adversarial robustness distillation (MTARD): a clean teacher for clean inputs,
a robust teacher for adversarial inputs, with the Entropy-Based Balance of the teachers'
temperatures and the Normalization Loss Balance of the two distillation terms.

Not a registered loss: it takes four sets of logits (the student and a teacher on the clean
inputs, the student and the other teacher on the adversarial inputs), which no call kind of
the registry describes, and its balance is state updated at every training step.
:func:`mtard_loss` is the stateless objective for given temperatures and weights;
:class:`MTARDBalance` keeps the state and applies both balance rules, as the official training
loop does.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from losslab._core import check_float, check_same_device, compute_dtype

__all__ = [
    "MTARDBalance",
    "MTARDTerms",
    "entropy_balance_step",
    "loss_balance_step",
    "mtard_loss",
]


class MTARDTerms(NamedTuple):
    """The total and its two distillation terms (scalars), and the teachers' mean entropies
    at the temperatures used (detached; the Entropy-Based Balance compares them)."""

    total: Tensor
    adv_kl: Tensor
    clean_kl: Tensor
    adv_entropy: Tensor
    clean_entropy: Tensor


def _check_pair(student: Tensor, teacher: Tensor, s_name: str, t_name: str) -> None:
    check_float(s_name, student)
    check_float(t_name, teacher)
    if student.ndim != 2:
        raise ValueError(f"{s_name} must have shape [N, C], got {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(f"{t_name} must have the shape of {s_name} {tuple(student.shape)}, got "
                         f"{tuple(teacher.shape)}")
    if student.shape[0] == 0:
        raise ValueError(f"{s_name} must hold at least one row")
    check_same_device(**{s_name: student, t_name: teacher})


def _kl_and_entropy(student: Tensor, teacher: Tensor, temperature: float
                    ) -> tuple[Tensor, Tensor]:
    """``KL(softmax(teacher / T) || softmax(student))`` averaged over rows, and the teacher's
    mean entropy at ``T`` (detached)."""
    dt = compute_dtype(student.dtype)
    log_q = F.log_softmax(teacher.to(dt) / temperature, dim=1)
    log_p = F.log_softmax(student.to(dt), dim=1)
    q = log_q.exp()
    # 0 log 0 = 0 for classes the teacher masks (-inf logits)
    kl = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q)).sum(1).mean()
    entropy = -torch.where(q > 0, q * log_q, torch.zeros_like(q)).sum(1).mean()
    return kl, entropy.detach()


def mtard_loss(
    student_adv_logits: Tensor,
    teacher_adv_logits: Tensor,
    student_clean_logits: Tensor,
    teacher_clean_logits: Tensor,
    *,
    temp_adv: float = 1.0,
    temp_clean: float = 1.0,
    weight_adv: float = 0.5,
) -> MTARDTerms:
    r"""MTARD's distillation objective for given teacher temperatures and term weights.

    .. math::
        \mathcal{L} = w_{adv}\, \mathrm{KL}\big(\sigma(t^{adv}(x') / \tau_{adv})\,\big\|\,
        \sigma(s(x'))\big) + (1 - w_{adv})\, \mathrm{KL}\big(\sigma(t^{nat}(x) / \tau_{nat})
        \,\big\|\, \sigma(s(x))\big)

    with :math:`\sigma` the softmax, :math:`s` the student (at temperature 1, as the official
    code), :math:`t^{adv}` the robust teacher on the adversarial inputs :math:`x'` (the
    official code generates them by PGD against the student's KL to the robust teacher) and
    :math:`t^{nat}` the clean teacher on the clean inputs. Each KL is summed over classes and
    averaged over rows (the library's ``batchmean``; the official code averages over the
    :math:`N \cdot C` entries, a constant factor :math:`1/C` on both terms, and adds 1e-5
    inside its logarithm, which the exact form here does without).

    Args:
        student_adv_logits, teacher_adv_logits: ``[N, C]`` on the adversarial inputs.
        student_clean_logits, teacher_clean_logits: ``[N', C]`` on the clean inputs.
        temp_adv, temp_clean: the teachers' temperatures (> 0; default 1, the official
            initial values).
        weight_adv: :math:`w_{adv} \in [0, 1]` (default 1/2, the official initial value).

    Returns:
        :class:`MTARDTerms` ``(total, adv_kl, clean_kl, adv_entropy, clean_entropy)``.

    Formula from the official code of the journal version (github.com/zhaoshiji123/
    MTARD-extension, ``resnet18_mtard_cifar10.py``); the paper text was not read here.

    Paper: Zhao, Wang, Wei, "Mitigating the Accuracy-Robustness Trade-off via Multi-Teacher
    Adversarial Distillation" (B-MTARD), arXiv 2306.16170.
    """
    _check_pair(student_adv_logits, teacher_adv_logits, "student_adv_logits",
                "teacher_adv_logits")
    _check_pair(student_clean_logits, teacher_clean_logits, "student_clean_logits",
                "teacher_clean_logits")
    if student_clean_logits.shape[1] != student_adv_logits.shape[1]:
        raise ValueError("the clean and adversarial logits must have the same number of "
                         f"classes, got {student_clean_logits.shape[1]} and "
                         f"{student_adv_logits.shape[1]}")
    for name, v in (("temp_adv", temp_adv), ("temp_clean", temp_clean)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if isinstance(weight_adv, bool) or not isinstance(weight_adv, (int, float)) or not (
            0 <= weight_adv <= 1):
        raise ValueError(f"weight_adv must be a number in [0, 1], got {weight_adv!r}")
    adv_kl, adv_h = _kl_and_entropy(student_adv_logits, teacher_adv_logits, float(temp_adv))
    clean_kl, clean_h = _kl_and_entropy(student_clean_logits, teacher_clean_logits,
                                        float(temp_clean))
    total = weight_adv * adv_kl + (1.0 - weight_adv) * clean_kl
    return MTARDTerms(total, adv_kl, clean_kl, adv_h, clean_h)


def entropy_balance_step(
    temp_adv: float, temp_clean: float, adv_entropy: float, clean_entropy: float, *,
    lr: float = 0.001, temp_min: float = 1.0, temp_max: float = 10.0,
) -> tuple[float, float]:
    r"""One Entropy-Based Balance step: move each teacher's temperature by ``lr`` towards the
    other teacher's entropy, then clip to ``[temp_min, temp_max]``:

    .. math::
        \tau_{adv} \leftarrow \operatorname{clip}\big(\tau_{adv} - \eta\,
        \operatorname{sign}(H_{adv} - H_{nat})\big),\qquad
        \tau_{nat} \leftarrow \operatorname{clip}\big(\tau_{nat} - \eta\,
        \operatorname{sign}(H_{nat} - H_{adv})\big)

    (the teacher with more entropy is sharpened, the other softened). The official code writes
    it with the mean of :math:`p \log p` (minus the entropy): ``sign(E_adv / E_nat - 1)``, the
    same sign for non-zero entropies. Defaults: ``lr`` 0.001, bounds [1, 10] (official).
    """
    d = adv_entropy - clean_entropy
    s = (d > 0) - (d < 0)
    new_adv = min(max(temp_adv - lr * s, temp_min), temp_max)
    new_clean = min(max(temp_clean + lr * s, temp_min), temp_max)
    return new_adv, new_clean


def loss_balance_step(
    weight_adv: float, weight_clean: float, adv_loss: float, clean_loss: float,
    init_adv: float, init_clean: float, *, lr: float = 0.025,
) -> tuple[float, float]:
    r"""One Normalization Loss Balance step: relative losses
    :math:`\hat L_k = L_k / L_k^{(0)}` (to the first step's), target weights
    :math:`\hat L_k / \sum_j \hat L_j` (the term that has decreased less gets more weight),
    :math:`w_k \leftarrow w_k - \eta (w_k - \text{target}_k)`, clipped at 0 and renormalised
    to sum to 1. Default ``lr`` 0.025 (official)."""
    r_adv = adv_loss / init_adv if init_adv > 0 else 1.0
    r_clean = clean_loss / init_clean if init_clean > 0 else 1.0
    total = r_adv + r_clean
    t_adv, t_clean = (r_adv / total, r_clean / total) if total > 0 else (0.5, 0.5)
    w_adv = max(weight_adv - lr * (weight_adv - t_adv), 0.0)
    w_clean = max(weight_clean - lr * (weight_clean - t_clean), 0.0)
    norm = w_adv + w_clean
    if norm <= 0:
        return 0.5, 0.5
    return w_adv / norm, w_clean / norm


class MTARDBalance(nn.Module):
    r"""MTARD's objective with its two balance rules as state (buffers, saved by
    ``state_dict()``).

    Each call in training mode computes the two KL terms at the current temperatures, then
    applies :func:`entropy_balance_step` to the temperatures (used from the next call on) and
    :func:`loss_balance_step` to the weights (with the first call's losses as the reference),
    and returns the total with the updated weights, in the order of the official training
    loop. In eval mode the state is left unchanged.

    Args:
        temp_lr: the temperature step (default 0.001); weight_lr: the weight step (default
            0.025); temp_min, temp_max: the temperature bounds (default 1, 10). The official
            schedule divides both steps by 10 with the learning rate: assign
            ``balance.temp_lr`` / ``balance.weight_lr`` to follow it.

    Paper: arXiv 2306.16170 (see :func:`mtard_loss`).
    """

    temp_adv: Tensor
    temp_clean: Tensor
    weight_adv: Tensor
    weight_clean: Tensor
    init_adv: Tensor
    init_clean: Tensor

    def __init__(self, *, temp_lr: float = 0.001, weight_lr: float = 0.025,
                 temp_min: float = 1.0, temp_max: float = 10.0) -> None:
        super().__init__()
        for name, v in (("temp_lr", temp_lr), ("weight_lr", weight_lr)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (0 < temp_min <= temp_max and math.isfinite(temp_max)):
            raise ValueError(f"temperature bounds must satisfy 0 < temp_min <= temp_max < inf, "
                             f"got {temp_min!r}, {temp_max!r}")
        self.temp_lr, self.weight_lr = float(temp_lr), float(weight_lr)
        self.temp_min, self.temp_max = float(temp_min), float(temp_max)
        f64 = torch.float64
        self.register_buffer("temp_adv", torch.tensor(1.0, dtype=f64))
        self.register_buffer("temp_clean", torch.tensor(1.0, dtype=f64))
        self.register_buffer("weight_adv", torch.tensor(0.5, dtype=f64))
        self.register_buffer("weight_clean", torch.tensor(0.5, dtype=f64))
        self.register_buffer("init_adv", torch.tensor(math.nan, dtype=f64))  # NaN: not yet
        self.register_buffer("init_clean", torch.tensor(math.nan, dtype=f64))

    def forward(self, student_adv_logits: Tensor, teacher_adv_logits: Tensor,
                student_clean_logits: Tensor, teacher_clean_logits: Tensor) -> MTARDTerms:
        terms = mtard_loss(student_adv_logits, teacher_adv_logits, student_clean_logits,
                           teacher_clean_logits, temp_adv=float(self.temp_adv),
                           temp_clean=float(self.temp_clean), weight_adv=float(self.weight_adv))
        if not self.training:
            return terms
        t_adv, t_clean = entropy_balance_step(
            float(self.temp_adv), float(self.temp_clean), float(terms.adv_entropy),
            float(terms.clean_entropy), lr=self.temp_lr, temp_min=self.temp_min,
            temp_max=self.temp_max)
        adv, clean = float(terms.adv_kl.detach()), float(terms.clean_kl.detach())
        if math.isnan(float(self.init_adv)):
            self.init_adv.fill_(adv)
            self.init_clean.fill_(clean)
        w_adv, w_clean = loss_balance_step(
            float(self.weight_adv), float(self.weight_clean), adv, clean, float(self.init_adv),
            float(self.init_clean), lr=self.weight_lr)
        self.temp_adv.fill_(t_adv)
        self.temp_clean.fill_(t_clean)
        self.weight_adv.fill_(w_adv)
        self.weight_clean.fill_(w_clean)
        total = w_adv * terms.adv_kl + w_clean * terms.clean_kl
        return MTARDTerms(total, terms.adv_kl, terms.clean_kl, terms.adv_entropy,
                          terms.clean_entropy)

    def extra_repr(self) -> str:
        return (f"temp_lr={self.temp_lr}, weight_lr={self.weight_lr}, "
                f"temp_min={self.temp_min}, temp_max={self.temp_max}")
