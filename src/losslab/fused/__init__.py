"""Fused, memory-efficient losses (no large intermediate such as the ``N x V`` logits)."""

from losslab.fused import goldfish, linear_cross_entropy  # noqa: F401
