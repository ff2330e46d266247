"""Finite-difference residuals in DiffusionPDE's style, with the correct 1/h^2 scaling.

A named baseline for comparisons, never the default: the weak-form operator of
``piddm_fem.residual`` is the residual of record. Central differences on the S x S grid with
h = 1/(S - 1) give the strong residual at interior nodes (same sign convention as the FEM
operator's scaled residual); boundary rows are u - 0. torch only; x is [B, C, S, S].
"""

from __future__ import annotations

import torch

from piddm_fem.errors import PiddmError


def _derivatives(u: torch.Tensor, h: float):
    """(u_x, u_y, Laplacian) at interior nodes by central differences."""
    c = u[:, 1:-1, 1:-1]
    ux = (u[:, 1:-1, 2:] - u[:, 1:-1, :-2]) / (2 * h)
    uy = (u[:, 2:, 1:-1] - u[:, :-2, 1:-1]) / (2 * h)
    lap = (u[:, 1:-1, 2:] + u[:, 1:-1, :-2] + u[:, 2:, 1:-1] + u[:, :-2, 1:-1] - 4 * c) / h**2
    return ux, uy, lap


def fd_residual(problem: str, x: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """[B, 1, S, S] finite-difference strong residual for darcy | poisson | helmholtz."""
    params = params or {}
    S = x.shape[-1]
    h = 1.0 / (S - 1)
    u = x[:, 1]
    ux, uy, lap = _derivatives(u, h)
    if problem == "darcy":
        a = x[:, 0]
        ax, ay, _ = _derivatives(a, h)
        interior = -(a[:, 1:-1, 1:-1] * lap + ax * ux + ay * uy) - params.get("f", 1.0)
    elif problem == "poisson":
        interior = -lap - x[:, 0, 1:-1, 1:-1]
    elif problem == "helmholtz":
        interior = -lap - params.get("k", 1.0) ** 2 * u[:, 1:-1, 1:-1] - x[:, 0, 1:-1, 1:-1]
    else:
        raise PiddmError(f"no finite-difference baseline for {problem!r}; use the weak-form operator")
    r = u.clone()
    r[:, 1:-1, 1:-1] = interior
    return r.unsqueeze(1)
