"""Hadamard matrices of the sizes decoder widths have, and the seeded orthogonal matrices
the `rotate` stage multiplies weights by.

A Hadamard matrix H_n has entries +-1 and H_n H_n^T = n I, so H_n / sqrt(n) is orthogonal.
Three constructions, combined by the Kronecker product (H_a (x) H_b is a Hadamard matrix of
order a*b):

- Sylvester: H_1 = [1], H_2m = [[H_m, H_m], [H_m, -H_m]]  (every power of 2)
- Paley I, prime q = 3 (mod 4): order q+1. With the Jacobsthal matrix
  Q_ij = chi(j - i) (chi the quadratic character mod q: 0 at 0, +1 on squares, -1 else),
  S = [[0, 1^T], [-1, Q]] and H = I + S.  q = 11 gives H_12, so 1536 = 12 * 128,
  3072 = 12 * 256.
- Paley II, prime q = 1 (mod 4): order 2(q+1). C = [[0, 1^T], [1, Q]] (symmetric) and
  H = C (x) [[1, -1], [-1, -1]] + I (x) [[1, 1], [1, -1]].  q = 17 gives H_36, so
  576 = 36 * 16 (SmolLM2-135M's hidden width).

A size none of these reach (e.g. 7, or 4 * 47: Hadamard orders must be 1, 2 or a multiple
of 4, and 188 has no Paley factor) is refused; the `random` kind works at every size.

The orthogonal matrices (QuaRot, arXiv 2404.00456, section 3; SpinQuant, arXiv 2405.16406):

    hadamard:  Q = H_n diag(s) / sqrt(n),  s_i = +-1 drawn from the seed
    random:    Q = QR(G) with G_ij ~ N(0, 1) from the seed, columns' signs fixed so that
               diag(R) > 0 (a Haar-distributed orthogonal matrix)
"""

from __future__ import annotations

import math

import torch

from compress.errors import CompressError

KINDS = ("hadamard", "random")


def is_prime(q: int) -> bool:
    return q >= 2 and all(q % d for d in range(2, math.isqrt(q) + 1))


def quadratic_character(q: int) -> torch.Tensor:
    """chi(a) for a = 0..q-1, q an odd prime: 0, +1 (a non-zero square mod q) or -1."""
    chi = -torch.ones(q, dtype=torch.float64)
    chi[sorted({(a * a) % q for a in range(1, q)})] = 1.0
    chi[0] = 0.0
    return chi


def jacobsthal(q: int) -> torch.Tensor:
    """Q_ij = chi(j - i mod q), [q, q]."""
    index = torch.arange(q)
    return quadratic_character(q)[(index[None, :] - index[:, None]) % q]


def sylvester(n: int) -> torch.Tensor:
    """H_n for n a power of 2."""
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def paley_one(q: int) -> torch.Tensor:
    """Order q+1 for a prime q = 3 (mod 4): H = I + [[0, 1^T], [-1, Q]]."""
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal(q)
    return torch.eye(q + 1, dtype=torch.float64) + s


def paley_two(q: int) -> torch.Tensor:
    """Order 2(q+1) for a prime q = 1 (mod 4): C (x) [[1,-1],[-1,-1]] + I (x) [[1,1],[1,-1]]."""
    c = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    c[0, 1:], c[1:, 0], c[1:, 1:] = 1.0, 1.0, jacobsthal(q)
    zero_block = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    sign_block = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64)
    return torch.kron(c, zero_block) + torch.kron(torch.eye(q + 1, dtype=torch.float64),
                                                  sign_block)


def _construct(n: int) -> torch.Tensor | None:
    """A Hadamard matrix of order n from the constructions above, or None."""
    if n >= 1 and n & (n - 1) == 0:
        return sylvester(n)
    if n % 4:  # 1 and 2 are powers of two; every other order is a multiple of 4
        return None
    if is_prime(n - 1) and (n - 1) % 4 == 3:
        return paley_one(n - 1)
    if n % 2 == 0 and is_prime(n // 2 - 1) and (n // 2 - 1) % 4 == 1:
        return paley_two(n // 2 - 1)
    # n = a * b with both constructible: the Kronecker product. Smallest a first keeps the
    # search short; a power-of-2 factor is always tried (n = 2^k m).
    for a in range(2, math.isqrt(n) + 1):
        if n % a == 0:
            left, right = _construct(a), _construct(n // a)
            if left is not None and right is not None:
                return torch.kron(left, right)
    return None


def hadamard(n: int) -> torch.Tensor:
    """H_n (float64, entries +-1, H H^T = n I), or a CompressError naming n and the fix."""
    h = _construct(n) if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else None
    if h is None:
        raise CompressError(f"no Hadamard matrix of size {n} is known to this toolkit "
                            "(Sylvester 2^k times a Paley factor): use kind: random")
    return h


def orthogonal(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    """A seeded orthogonal [n, n] float64 matrix of `kind` (see the module docstring)."""
    if kind == "hadamard":
        h = hadamard(n)
        signs = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64) * 2 - 1
        return h * signs.to(torch.float64)[None, :] / math.sqrt(n)
    if kind == "random":
        gaussian = torch.randn(n, n, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        return q * torch.sign(torch.diagonal(r))[None, :]
    raise CompressError(f"rotation kind {kind!r} is unknown: choose one of {', '.join(KINDS)}")
