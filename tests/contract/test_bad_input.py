"""The bad-input matrix: every registered loss, by kind, fails loudly and never silently.

A loss passes it by declaring its constraints (``check=hparams(...)`` on its shell, and the
``LossSpec`` fields), not by writing its own tests:

* every hyperparameter rule rejects NaN, strings and out-of-range values at construction;
  every numeric hyperparameter has a rule;
* integer labels of any integer dtype (int32, uint8, ...) give the int64 result; bool labels
  are a ``ValueError``;
* soft (probability) targets that do not sum to 1 or hold negative entries are a
  ``ValueError`` (tolerance ``_core.PROB_ATOL``);
* an empty batch gives a finite zero (or a ``ValueError``), never a ``RuntimeError``;
* C = 1 for a class-score loss is a ``ValueError`` or a finite value, never NaN;
* NaN inputs give NaN (or a ``ValueError``), never a plausible finite number; inf likewise
  never a finite number presented as the loss of finite inputs;
* half inputs (fp16/bf16) of large magnitude return float32 and agree with float32 inputs;
* a ``-inf`` logit on a non-target class (a class mask) gives a finite loss where the
  math is finite.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import pytest
import torch

import losslab
from losslab._hparams import HParamCheck
from losslab.registry import LossSpec
from tests.contract.cases import Call, make_call

NAMES = losslab.available()
SPECS = [losslab.spec(n) for n in NAMES]
ids = [s.name for s in SPECS]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _build(s: LossSpec, **over: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return losslab.create(s.name, **{**s.example_hparams, **over})


def _run(m: torch.nn.Module, call: Call) -> torch.Tensor:
    torch.manual_seed(1234)
    return _first(m(*call.args, **call.kwargs))


def _rules(s: LossSpec) -> dict[str, Any]:
    check = getattr(s.module, "check", None)
    return dict(check.rules) if isinstance(check, HParamCheck) else {}


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("s", SPECS, ids=ids)
def test_every_numeric_hyperparameter_is_declared(s: LossSpec) -> None:
    rules = _rules(s)
    undeclared = [k for k, v in s.defaults.items()
                  if k != "reduction" and k not in s.example_hparams and k not in rules
                  and (isinstance(v, (int, float, str)) or v is None)]
    assert not undeclared, f"{s.name}: declare rules for {undeclared} (check=hparams(...))"


CASES = [(s, k, v) for s in SPECS for k, rule in _rules(s).items() if k in s.defaults
         for v in rule.rejects()]


@pytest.mark.parametrize("s,name,value", CASES,
                         ids=[f"{s.name}-{k}={v!r}" for s, k, v in CASES])
def test_bad_hyperparameter_values_raise_at_construction(s: LossSpec, name: str,
                                                         value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        _build(s, **{name: value})


# --------------------------------------------------------------------------------------------
# Labels and targets
# --------------------------------------------------------------------------------------------

LABEL_ARG = {"embeddings": (1,), "episode": (1, 3), "logits": (1,), "dense": (1,),
             "bags": (1,), "linear": (2,), "tokens": (1,)}
LABELLED = [s for s in SPECS if s.kind in LABEL_ARG]


@pytest.mark.parametrize("s", LABELLED, ids=[s.name for s in LABELLED])
def test_integer_label_dtypes_are_accepted_and_bool_rejected(s: LossSpec) -> None:
    call = make_call(s, dtype=torch.float32)
    ref = _run(_build(s), call)
    for dtype in (torch.int32, torch.uint8):
        args = list(call.args)
        for i in LABEL_ARG[s.kind]:
            args[i] = args[i].to(dtype)
        torch.testing.assert_close(_run(_build(s), Call(tuple(args), call.kwargs)), ref)
    args = list(call.args)
    for i in LABEL_ARG[s.kind]:
        args[i] = args[i] > 0
    with pytest.raises(ValueError):
        _run(_build(s), Call(tuple(args), call.kwargs))


def _soft_target_call(s: LossSpec) -> Call | None:
    """A call with probability targets, if the loss accepts them."""
    if s.kind not in ("logits", "dense", "teacher"):
        return None
    call = make_call(s, dtype=torch.float64)
    if s.kind == "teacher":
        return None
    logits = call.args[0]
    probs = torch.softmax(torch.randn_like(logits.detach()), dim=1)
    soft = Call((logits, probs), call.kwargs)
    try:
        _run(_build(s), soft)
    except ValueError:
        return None
    return soft


@pytest.mark.parametrize("s", [s for s in SPECS if s.kind in ("logits", "dense")],
                         ids=[s.name for s in SPECS if s.kind in ("logits", "dense")])
def test_unnormalised_probability_targets_raise(s: LossSpec) -> None:
    soft = _soft_target_call(s)
    if soft is None:
        pytest.skip("takes class ids only")
    logits, probs = soft.args
    for bad in (probs * 2, probs - 0.5 * probs.amax(1, keepdim=True)):
        with pytest.raises(ValueError, match="target"):
            _run(_build(s), Call((logits, bad), soft.kwargs))


# --------------------------------------------------------------------------------------------
# Empty batches, one class, NaN and inf
# --------------------------------------------------------------------------------------------


def _empty_call(s: LossSpec) -> Call:
    call = make_call(s, dtype=torch.float32)
    k = s.kind
    args = list(call.args)
    kw = dict(call.kwargs)
    if k in ("logits", "dense", "teacher", "paired", "embeddings"):
        for i in (0, 1):
            args[i] = args[i][:0].detach().requires_grad_(args[i].requires_grad)
    elif k == "episode":
        args[2], args[3] = args[2][:0].detach().requires_grad_(), args[3][:0]
    elif k == "scores":
        args = [a[:0] for a in args]
        args[0].requires_grad_()
    elif k == "bags":
        args = [args[0][:0].detach().requires_grad_(), args[1][:0], args[2][:0]]
    elif k == "linear":
        args[0], args[2] = args[0][:0].detach().requires_grad_(), args[2][:0]
    elif k == "preference":
        args = [args[0][:0].detach().requires_grad_(), args[1][:0].detach().requires_grad_()]
        for key in ("ref_chosen", "ref_rejected", "chosen_length", "rejected_length",
                    "chosen_grad_norm", "rejected_grad_norm"):
            if key in kw:
                kw[key] = kw[key][:0]
    elif k == "tokens":
        args = [args[0][:0].detach().requires_grad_(), args[1][:0]]
    elif k == "regression":
        args = [args[0][:0].detach().requires_grad_(), args[1][:0]]
        for key in ("features", "weights", "inputs"):
            if key in kw:
                kw[key] = kw[key][:0].detach().requires_grad_(kw[key].requires_grad)
    elif k == "weights":  # no layer at all
        args = []
    elif k == "unnormalized":  # no data point and no noise sample
        args = [a[:0].detach().requires_grad_(a.requires_grad) for a in args]
    if "index" in kw:
        kw["index"] = kw["index"][:0]
    return Call(tuple(args), kw)


@pytest.mark.parametrize("s", SPECS, ids=ids)
def test_empty_batch_is_a_finite_zero_or_a_value_error(s: LossSpec) -> None:
    call = _empty_call(s)
    try:
        out = _run(_build(s), call)
    except ValueError:
        return
    assert torch.isfinite(out).all()
    assert float(out.sum()) == 0.0


CLASS_SCORES = [s for s in SPECS if s.kind in ("logits", "dense", "teacher")]


@pytest.mark.parametrize("s", CLASS_SCORES, ids=[s.name for s in CLASS_SCORES])
def test_one_class_column_is_a_value_error_or_finite(s: LossSpec) -> None:
    call = make_call(s, dtype=torch.float32)
    args = list(call.args)
    args[0] = args[0][:, :1].detach().requires_grad_()
    if s.kind == "teacher":
        args[1] = args[1][:, :1]
    else:
        args[1] = torch.zeros_like(args[1])
    try:
        out = _run(_build(s, **({"num_classes": 1} if "num_classes" in s.example_hparams
                                 else {})), Call(tuple(args), call.kwargs))
    except ValueError:
        return
    assert torch.isfinite(out).all(), f"{s.name}: C = 1 gives {out}"


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("s", SPECS, ids=ids)
def test_non_finite_input_never_becomes_a_plausible_number(s: LossSpec, bad: float) -> None:
    call = make_call(s, dtype=torch.float32)
    x = call.args[0].detach().clone()
    x.view(-1)[0] = bad
    args = (x.requires_grad_(), *call.args[1:])
    try:
        out = _run(_build(s), Call(args, call.kwargs))
    except ValueError:
        return
    if bad != bad:  # NaN must propagate
        assert not torch.isfinite(out).all(), f"{s.name}: NaN input gave {out}"


# --------------------------------------------------------------------------------------------
# Half precision and masked classes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("s", SPECS, ids=ids)
def test_half_inputs_return_float32_close_to_float32(s: LossSpec, dtype: torch.dtype) -> None:
    scale = 200.0 if s.kind in ("embeddings", "episode", "linear") else 30.0
    call32 = make_call(s, dtype=torch.float32, scale=scale)
    half = call32.to(dtype)
    # the same values on both sides: float32 inputs rounded to the half dtype
    call = half.to(torch.float32)
    m = _build(s)
    ref = _run(m, call)
    out = _run(_build(s).to(dtype), half)
    assert out.dtype == torch.float32, f"{s.name}: {dtype} inputs return {out.dtype}"
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2 * max(1.0, float(ref.abs().max())))


#: losses over logits (a teacher-kind loss over features, nd_loss, has no class to mask;
#: sparse_cbm's logits are concept activations fed to a linear head, not class scores)
MASKED = [s for s in SPECS if s.kind in ("logits", "teacher")
          and "student_features" not in inspect.signature(s.function).parameters
          and s.name != "sparse_cbm"]


@pytest.mark.parametrize("s", MASKED, ids=[s.name for s in MASKED])
def test_masked_class_gives_a_finite_loss(s: LossSpec) -> None:
    call = make_call(s, dtype=torch.float32)
    args = [a.detach().clone() if isinstance(a, torch.Tensor) else a for a in call.args]
    C = args[0].shape[1]
    if s.kind == "logits":
        target = args[1]
        masked = (target + 1) % C  # a class that is not the target of the row
        rows = torch.arange(args[0].shape[0])
        args[0][rows, masked] = -math.inf
    else:
        args[1][:, -1] = -math.inf  # the teacher masks the last class
        args[0][:, -1] = -math.inf  # and so does the student (a shared vocabulary mask)
    args[0].requires_grad_()
    out = _run(_build(s), Call(tuple(args), call.kwargs))
    assert torch.isfinite(out).all(), f"{s.name}: masked class gives {out}"
    out.sum().backward()
    assert torch.isfinite(args[0].grad).all()
