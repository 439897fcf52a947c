"""losslab._ops.paired: validation, compute dtype and row normalisation of a paired batch."""

from __future__ import annotations

import pytest
import torch

from losslab._ops.paired import prepare_paired


@pytest.mark.parametrize("dtype,want", [(torch.float16, torch.float32),
                                        (torch.bfloat16, torch.float32),
                                        (torch.float64, torch.float64)])
def test_pair_is_returned_in_the_compute_dtype(dtype, want) -> None:
    a, b = torch.randn(4, 3).to(dtype) * 50, torch.randn(4, 3).to(dtype) * 50
    a2, b2 = prepare_paired(a, b, normalize=False)
    assert a2.dtype == b2.dtype == want
    torch.testing.assert_close(a2, a.to(want), rtol=0, atol=0)
    a3, b3 = prepare_paired(a, b, normalize=True)
    assert a3.dtype == want
    torch.testing.assert_close(a3.norm(dim=1), torch.ones(4, dtype=want))
    torch.testing.assert_close(b3, b.to(want) / b.to(want).norm(dim=1, keepdim=True))


def test_pair_errors_name_the_arguments() -> None:
    a = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same number of rows"):
        prepare_paired(a, a[:3], normalize=True)
    with pytest.raises(ValueError, match="b must have 3 columns"):
        prepare_paired(a, torch.randn(4, 2), normalize=True)
    with pytest.raises(ValueError, match="a must have at least 1 row"):
        prepare_paired(a[:0], a[:0], normalize=True)
    with pytest.raises(ValueError, match="a must be a floating-point"):
        prepare_paired(torch.ones(4, 3, dtype=torch.long), a, normalize=True)
