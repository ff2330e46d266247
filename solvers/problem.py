"""The Problem interface: what a PDE file declares, and nothing else.

A problem is a weak form F(u, coefficients; v) = 0 for one unknown grid channel on the unit
square, discretised with Q1 on the structured quadrilateral mesh whose vertices are the grid. The
form is any UFL expression in the fields; linear problems are solved in one Newton step with a
direct solver, nonlinear ones (Burgers in space-time, p-Laplacian-like diffusion) with Newton line
search – the same interface holds both (``linear = False`` and tighter SNES settings).
"""

from __future__ import annotations

import firedrake as fd
import numpy as np

from piddm_fem.errors import PiddmError

LU = {
    "snes_type": "ksponly",
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}
NEWTON_LU = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "bt",
    "snes_rtol": 1e-12,
    "snes_atol": 1e-13,
    "snes_max_it": 50,
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}


class Problem:
    """Subclasses set ``name``, ``channels``, ``unknown``, ``default_params`` and define
    ``form`` and ``sample_coefficients``; the rest has defaults."""

    name: str = ""
    channels: tuple[str, ...] = ()
    unknown: str = "u"
    default_params: dict = {}
    linear: bool = True

    def __init__(self, **params):
        unknown = set(params) - set(self.default_params)
        if unknown:
            raise PiddmError(
                f"problem {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.default_params)}"
            )
        self.params = {**self.default_params, **params}

    @property
    def coefficients(self) -> tuple[str, ...]:
        return tuple(c for c in self.channels if c != self.unknown)

    def mesh(self, S: int, comm=None, reorder: bool | None = None):
        """Structured (S-1) x (S-1) quadrilateral mesh: its vertices are the S x S grid."""
        kwargs = {} if comm is None else {"comm": comm}
        return fd.UnitSquareMesh(S - 1, S - 1, quadrilateral=True, reorder=reorder, **kwargs)

    def space(self, mesh):
        return fd.FunctionSpace(mesh, "Q", 1)

    def form(self, fields: dict, v):
        """F(u, coefficients; v): a UFL 1-form, with ``fields[name]`` a Function or expression."""
        raise NotImplementedError

    def boundary_value(self, mesh):
        """Dirichlet data g for the unknown on the whole boundary (UFL, may use coordinates)."""
        return fd.Constant(0.0)

    def sample_coefficients(self, S: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Coefficient channels on the grid, [S, S] each, drawn from ``rng`` only."""
        raise NotImplementedError

    @property
    def solver_parameters(self) -> dict:
        return dict(LU if self.linear else NEWTON_LU)
