"""The residual on the structured Q1 grid as a stencil: shifted slices, no gather, no scatter-add.

On the S x S grid exported with ``structured`` set (``piddm_fem.solvers.export``), cell (j, i) has
its local nodes in the order (j, i), (j, i + 1), (j + 1, i), (j + 1, i + 1), and when every cell has
the same element tensor T (checked to round-off), each Taylor term's cell contribution is a fixed
polynomial in the four shifted [B, S - 1, S - 1] views of the fields. It is evaluated in the cell
Haar basis of both the fields and the test functions,

    y_(ay, ax) = sum_(dy, dx) h[ay, dy] h[ax, dx] x[j + dy, i + dx],  h = [[1, 1], [-1, 1]]

(cell sum, x difference, y difference, twist), in which the Q1 tensors of the forms here are sparse
by parity: Darcy's a grad u . grad v has 7 nonzero entries of 64, kappa u^3 v 64 of 256. Per cell:
the Haar components from differences of neighbouring nodes (separable, two passes per direction),
one fused multiply-add per nonzero entry (products of three fields share their pair product), and
the transposed Haar transform fused with the scatter of the four corners into the node grid (again
separable). Everything but the batch's arithmetic is precomputed here, at construction.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

# Entries (and cell-to-cell differences) below this fraction of a term's largest are round-off of
# the export (Darcy: 5.7e-14 at S = 128, growing about like S^2).
ROUNDOFF = 1e-11
_H = np.kron([[1.0, 1.0], [-1.0, 1.0]], [[1.0, 1.0], [-1.0, 1.0]])  # [Haar component, corner]
_HINV = _H.T / 4.0


def canonical_connectivity(S: int) -> np.ndarray:
    """[(S - 1)^2, 4] grid nodes of the cells in the structured order (see module doc)."""
    j, i = np.divmod(np.arange((S - 1) ** 2), S - 1)
    base = j * S + i
    return base[:, None] + np.array([0, 1, S, S + 1])


def uniform_tensor(tensor: np.ndarray) -> np.ndarray | None:
    """The element tensor shared by all cells (their mean), or None when cells differ beyond round-off."""
    mean = tensor.mean(0)
    scale = np.abs(mean).max()
    return mean if np.abs(tensor - mean).max() <= ROUNDOFF * scale else None


class StencilResidual:
    """The non-constant Taylor terms as a cell stencil; ``__call__(x)`` gives [B, S, S]."""

    def __init__(self, terms, S: int):
        """``terms``: (channel combo, uniform element tensor [4] + [4] * k) with k >= 1."""
        self.S = S
        # cell e = j S + i (i = S - 1: a padding column, kept at zero) of the flat cell arrays
        self.cells_len = (S - 1) * S - 1
        # per test Haar component beta: {monomial: coefficient}, a monomial a sorted tuple of
        # (channel, field Haar component) factors
        rows = [dict() for _ in range(4)]
        for combo, tensor in terms:
            haar = np.asarray(tensor, dtype=np.float64)
            for axis in range(haar.ndim):  # fields: x = HINV y; test rows: E = HINV^T L
                haar = np.moveaxis(np.tensordot(haar, _HINV, axes=([axis], [0])), -1, axis)
            keep = np.abs(haar) > ROUNDOFF * np.abs(haar).max()
            for index in zip(*np.nonzero(keep)):
                beta, alphas = int(index[0]), index[1:]
                mono = tuple(sorted(zip(combo, (int(a) for a in alphas))))
                rows[beta][mono] = rows[beta].get(mono, 0.0) + float(haar[index])
        self.rows = [sorted(r.items(), key=lambda kv: (len(kv[0]), kv[0])) for r in rows]
        self.components = {}  # channel -> the Haar components it needs
        for mono, _ in itertools.chain(*self.rows):
            for c, a in mono:
                self.components.setdefault(c, set()).add(a)

    def haar(self, x: torch.Tensor, comps) -> dict:
        """{a: [B, L]} Haar components a = 2 ay + ax of the flat node field x [B, S * S]."""
        S, L = self.S, self.cells_len
        along_x = [x[:, 1:] + x[:, :-1] if any(a % 2 == 0 for a in comps) else None,
                   x[:, 1:] - x[:, :-1] if any(a % 2 == 1 for a in comps) else None]
        out = {}
        for a in comps:
            ay, ax = divmod(a, 2)
            p = along_x[ax]
            out[a] = p[:, S:S + L] + p[:, :L] if ay == 0 else p[:, S:S + L] - p[:, :L]
        return out

    def cells(self, x: torch.Tensor) -> list:
        """E_beta [B, L] (None where a row is empty): the cell contributions in the test Haar basis,
        zero in the padding column."""
        y = {c: self.haar(x[:, c], comps) for c, comps in self.components.items()}
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        out = []
        for row in self.rows:
            acc, pairs = None, {}
            for mono, coef in row:
                f = [y[c][a] for c, a in mono]
                if len(mono) == 3:
                    if mono[:2] not in pairs:
                        pairs[mono[:2]] = f[0] * f[1]
                    f = [pairs[mono[:2]], f[2]]
                if len(f) == 1:
                    acc = f[0] * coef if acc is None else acc.add_(f[0], alpha=coef)
                else:  # the first product allocates (one pass), the others accumulate in place
                    acc = (torch.addcmul(zero, f[0], f[1], value=coef) if acc is None
                           else acc.addcmul_(f[0], f[1], value=coef))
            if acc is not None:
                acc[:, self.S - 1::self.S] = 0.0
            out.append(acc)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S * S]: the sum of the terms' cell contributions at the nodes, for x [B, C, S * S]."""
        E = self.cells(x)
        # L_(dy, dx) = sum_(by, bx) h[by, dy] h[bx, dx] E_(by, bx), added at node (j + dy, i + dx):
        # first along x (shift 1), then along y (shift S)
        along_x = []
        for by in (0, 1):
            low, high = _minus_plus(E[2 * by], E[2 * by + 1])
            along_x.append(_shift_add(low, high, 1))
        low, high = _minus_plus(*along_x)
        if high is None:
            return torch.zeros(x.shape[0], self.S * self.S, dtype=x.dtype, device=x.device)
        return _shift_add(low, high, self.S)


def _minus_plus(s, d):
    """(s - d, s + d), where None stands for zero; (None, d) for s None (see ``_shift_add``)."""
    if d is None:
        return s, s
    if s is None:
        return None, d
    return s - d, s + d


def _shift_add(low, high, shift: int):
    """[B, n + shift] for [B, n] inputs: ``low`` added at offset 0, ``high`` at ``shift``; ``low``
    None stands for -high (``_minus_plus`` of a missing sum)."""
    if high is None:
        return None
    if low is None:
        return torch.cat([-high[:, :shift], high[:, :-shift] - high[:, shift:], high[:, -shift:]], 1)
    return torch.cat([low[:, :shift], low[:, shift:] + high[:, :-shift], high[:, -shift:]], 1)
