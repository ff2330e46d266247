"""Exact physics in torch: a batched, differentiable solve of an exported weak form that is linear
in the unknown (docs/inverse.md).

For such a form the exported residual is R(x) = K(c) u + r0(c), with c the coefficient channels:
the element tensors of the terms in which the unknown appears once give the stiffness K(c)
exactly (contracted with the coefficients' cell values and scattered like the residual). Dirichlet
rows are eliminated (u = g there). On the structured grid, with interior nodes numbered row by
row, K is block tridiagonal (rows j-1, j, j+1 of the Q1 stencil), so the interior system is solved
by block LU (block Thomas) in S - 2 steps of batched (S-2) x (S-2) dense solves: O(S^4) work per
field instead of O(S^6). Autograd differentiates through the solves, which amounts to the adjoint
(transposed) solve. Runs wherever torch runs (CPU, GPU), without Firedrake.
"""

from __future__ import annotations

import torch

from piddm_fem.errors import PiddmError
from piddm_fem.residual import ResidualOperator

CHUNK_BYTES = 256 << 20  # memory for the stencil blocks of one batch of solves


def block_tridiagonal_solve(lower, diag, upper, rhs):
    """Solve the block tridiagonal systems [B, m blocks of size k]: row block j is
    lower[:, j] x[j-1] + diag[:, j] x[j] + upper[:, j] x[j+1] = rhs[:, j] (lower[:, 0] and
    upper[:, m-1] are ignored). Block LU without pivoting: for symmetric positive definite or
    block diagonally dominant matrices, as the elliptic stiffness matrices here are."""
    m = diag.shape[1]
    pivots, reduced = [diag[:, 0]], [rhs[:, 0]]
    for j in range(1, m):
        X = torch.linalg.solve(pivots[-1], torch.cat([upper[:, j - 1], reduced[-1].unsqueeze(-1)], -1))
        pivots.append(diag[:, j] - lower[:, j] @ X[..., :-1])
        reduced.append(rhs[:, j] - (lower[:, j] @ X[..., -1:]).squeeze(-1))
    x = [torch.linalg.solve(pivots[-1], reduced[-1])]
    for j in range(m - 2, -1, -1):
        x.append(torch.linalg.solve(pivots[j], reduced[j] - (upper[:, j] @ x[-1].unsqueeze(-1)).squeeze(-1)))
    return torch.stack(x[::-1], 1)


class LinearFEMSolve:
    """u(c) for ``operator``'s problem: ``solve(x)`` with x [B, C, S, S] (the unknown's channel is
    ignored) returns x with the unknown replaced by the FEM solution, differentiable in x."""

    def __init__(self, operator: ResidualOperator, instead: str = "use --physics soft"):
        """``instead``: what the one-line error on an unsupported form tells the user to do."""
        u = operator.unknown
        degrees = [combo.count(u) for combo in operator.term_channels]
        if max(degrees, default=0) > 1:
            raise PiddmError(f"{operator.problem} is nonlinear in the unknown; the exact-physics solve "
                             f"handles forms linear in u only ({instead})")
        if 1 not in degrees:
            raise PiddmError(f"{operator.problem}: the form does not depend on the unknown; nothing to solve")
        if not operator.dirichlet_boundary:
            raise PiddmError(f"{operator.problem}: the exact-physics solve needs the unknown prescribed "
                             f"(Dirichlet) on the whole boundary; {instead}")
        self.operator = operator
        self.matrix_terms = [n for n, d in enumerate(degrees) if d == 1]
        S = operator.resolution
        conn = operator.connectivity
        rows, cols = conn[:, :, None].expand(-1, -1, conn.shape[1]), conn[:, None, :].expand(-1, conn.shape[1], -1)
        rj, ri, cj, ci = rows // S, rows % S, cols // S, cols % S
        # where each local entry K_e[r, c] lands in the stencil blocks [S (row j), 3 (cj - rj), S (ri), S (ci)]
        self.block_index = (((rj * 3 + (cj - rj + 1)) * S + ri) * S + ci).reshape(-1)

    def stencil_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S, 3, S, S]: entry [b, j, d, i, i'] is dR_(j,i) / du_(j+d-1, i')."""
        op = self.operator
        B, S = x.shape[0], op.resolution
        cells = op.cell_values(x)
        local = None
        for t in self.matrix_terms:  # the local matrices dR_e/du_e of the terms linear in u
            part = op.term_local(t, cells, open_at=op.term_channels[t].index(op.unknown))
            local = part if local is None else local + part
        blocks = torch.zeros(B, S * 3 * S * S, dtype=x.dtype, device=x.device)
        return blocks.index_add(1, self.block_index, local.reshape(B, -1)).reshape(B, S, 3, S, S)

    def solve(self, x: torch.Tensor) -> torch.Tensor:
        """The fields x with the unknown solved, in batches whose stencil blocks (3 S^3 entries
        per field) take at most CHUNK_BYTES."""
        self.operator.check_input(x)
        chunk = max(1, CHUNK_BYTES // (3 * self.operator.resolution ** 3 * x.element_size()))
        return torch.cat([self._solve(part) for part in x.split(chunk)]) if len(x) > chunk else self._solve(x)

    def _solve(self, x: torch.Tensor) -> torch.Tensor:
        op = self.operator
        S = op.resolution
        g = op.bc_values.to(x.dtype).reshape(S, S)
        bc = op.bc_mask.reshape(S, S)
        xg = x.clone()
        xg[:, op.unknown] = torch.where(bc, g, 0.0)
        rhs = -op.raw(xg)[:, 0, 1:-1, 1:-1]  # interior rows at u = g on the boundary, 0 inside
        K = self.stencil_blocks(x)[:, 1:-1, :, 1:-1, 1:-1]
        inner = block_tridiagonal_solve(K[:, :, 0], K[:, :, 1], K[:, :, 2], rhs)
        out = x.clone()
        out[:, op.unknown] = torch.where(bc, g, 0.0)
        out[:, op.unknown, 1:-1, 1:-1] = inner
        return out
