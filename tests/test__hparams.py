"""The declared hyperparameter rules (losslab._hparams)."""

from __future__ import annotations

import math

import pytest

from losslab._hparams import Choice, Flag, Int, Kwargs, Real, hparams


def test_real_accepts_numbers_in_range_and_rejects_the_rest() -> None:
    check = hparams(margin=Real(ge=0), tau=Real(gt=0, le=1), bias=Real(optional=True))
    check(margin=0, tau=1.0, bias=None)
    check(margin=2.5, tau=1e-9, bias=-10)
    for bad in ({"margin": -0.1}, {"margin": math.nan}, {"margin": "0.2"}, {"margin": True},
                {"tau": 0.0}, {"tau": 1.5}, {"tau": math.inf}, {"margin": None}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check(**bad)


def test_message_says_what_was_expected() -> None:
    with pytest.raises(ValueError, match=r"tau must be a finite real number > 0, got -1"):
        hparams(tau=Real(gt=0))(tau=-1)
    with pytest.raises(ValueError, match=r"margin must be a finite real number, got .0.2. \(str\)"):
        hparams(margin=Real())(margin="0.2")


def test_int_choice_flag() -> None:
    check = hparams(k=Int(ge=1), chunk=Int(ge=1, optional=True), mode=Choice("a", "b"),
                    normalize=Flag())
    check(k=3, chunk=None, mode="a", normalize=False)
    for bad in ({"k": 0}, {"k": 1.0}, {"k": True}, {"chunk": -1}, {"chunk": 0}, {"mode": "c"},
                {"mode": None}, {"normalize": 1}, {"normalize": None}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            check(**bad)


def test_choice_does_not_confuse_true_with_one() -> None:
    check = hparams(drop_first=Choice(True, "auto"))
    check(drop_first=True)
    check(drop_first="auto")
    with pytest.raises(ValueError):
        check(drop_first=1)


@pytest.mark.parametrize("rule", [Real(ge=0), Real(gt=0, lt=1), Real(optional=True), Int(ge=1),
                                  Int(ge=0, le=3, optional=True), Choice("x", "y"), Flag(),
                                  Kwargs()])
def test_every_rule_rejects_what_it_says_it_rejects(rule) -> None:
    values = list(rule.rejects())
    assert values
    for v in values:
        with pytest.raises(ValueError, match="p"):
            rule.check("p", v)


def test_unknown_names_are_left_alone_and_extra_constraints_run() -> None:
    def ordered(**v: float) -> None:
        if "lo" in v and "hi" in v and v["lo"] > v["hi"]:
            raise ValueError("lo must be <= hi")

    check = hparams(ordered, lo=Real(), hi=Real())
    check(lo=0, hi=1, reduction="mean")
    with pytest.raises(ValueError, match="lo must be <= hi"):
        check(lo=2, hi=1)
    both = check | hparams(hi=Real(le=0.5))
    with pytest.raises(ValueError, match="hi"):
        both(hi=0.9)


# PerClass (added with the logits losses' class weights, priors, counts and focal alpha)


@pytest.mark.parametrize("optional", [False, True])
def test_per_class_rejects_what_it_says_it_rejects(optional: bool) -> None:
    from losslab._hparams import PerClass

    for rule in (PerClass(gt=0, optional=optional),
                 PerClass(ge=0, scalar=Real(ge=0, le=1), optional=optional)):
        for v in rule.rejects():
            with pytest.raises(ValueError, match="p"):
                rule.check("p", v)


def test_per_class_accepts_vectors_and_optional_scalars() -> None:
    import torch

    from losslab._hparams import PerClass

    weights = PerClass(ge=0, optional=True)
    for ok in (None, [0.0, 1.5], (1, 2, 3), torch.tensor([0.5, 2.0])):
        weights.check("weight", ok)
    for bad in ([1.0, math.nan], [1.0, -0.1], [], [[1.0]], "1,2", 0.5, True,
                torch.tensor([True, False]), ["a", "b"]):
        with pytest.raises(ValueError, match="weight"):
            weights.check("weight", bad)
    alpha = PerClass(ge=0, scalar=Real(ge=0, le=1), optional=True)
    alpha.check("alpha", 0.25)
    alpha.check("alpha", [0.25, 3.0])
    with pytest.raises(ValueError, match=r"alpha must be a finite real number >= 0 and <= 1, or "
                                         r"a non-empty 1-d sequence"):
        alpha.check("alpha", 1.5)
    counts = PerClass(gt=0)
    with pytest.raises(ValueError, match="class_counts must not be None"):
        counts.check("class_counts", None)
    with pytest.raises(ValueError, match=r"class_counts must be .* > 0 .*got an entry 0.0"):
        counts.check("class_counts", [3, 0])
