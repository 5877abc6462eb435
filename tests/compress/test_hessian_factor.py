"""The inverse-Hessian factor U = P chol(P H P)^-1 P against the textbook chain
U = chol((H + damp I)^-1, upper) computed independently, and the in-place reversal."""

from __future__ import annotations

import pytest
import torch

from compress.hessian import inverse_hessian_factor, reverse_in_place


@pytest.mark.parametrize("n", [1, 2, 7, 64, 301])
def test_reverse_in_place_is_p_m_p(n):
    m = torch.randn(n, n, dtype=torch.float64)
    expected = m.flip(0, 1)
    reverse_in_place(m, rows=5)
    assert torch.equal(m, expected)


@pytest.mark.parametrize("consume", [False, True])
def test_factor_equals_the_cholesky_of_the_inverse(consume):
    torch.manual_seed(0)
    x = torch.randn(400, 96, dtype=torch.float64)
    h = x.T @ x
    damp = 0.01 * torch.diagonal(h).mean()
    reference = torch.linalg.cholesky(torch.linalg.inv(h + damp * torch.eye(96,
                                      dtype=torch.float64)), upper=True)
    work = h.clone()
    factor = inverse_hessian_factor(work, 0.01, "rtn",
                                    rebuild=(lambda: h.clone()) if consume else None)
    assert factor.dtype == torch.float32
    assert torch.equal(factor, torch.triu(factor))
    torch.testing.assert_close(factor.double(), reference, rtol=1e-5, atol=1e-7)
    if not consume:
        assert torch.equal(work, h)  # left untouched


def test_a_singular_hessian_is_retried_with_more_dampening_from_rebuild():
    h = torch.zeros(4, 4, dtype=torch.float64)
    h[0, 0], h[1, 1] = 1.0, -1.0  # mean diagonal 0: no dampening can make it definite
    calls = []

    def rebuild():
        calls.append(1)
        return h.clone()

    with pytest.raises(Exception, match="not positive definite"):
        inverse_hessian_factor(h.clone(), 0.01, "rtn", rebuild=rebuild)
    assert len(calls) == 3  # every retry started from a fresh H
