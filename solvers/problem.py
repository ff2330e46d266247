"""The Problem interface: what a PDE file declares, and nothing else.

A problem is a weak form F(u, coefficients; v) = 0 for one unknown grid channel on the unit
square, discretised with Q1 on the structured quadrilateral mesh whose vertices are the grid. The
form is any UFL expression in the fields; linear problems are solved in one linear solve, nonlinear
ones (``linear = False``, e.g. reaction_diffusion) with Newton line search. Each has a "direct"
(MUMPS LU) and a "krylov" (CG or GMRES + GAMG, or GMRES + ILU) recipe, defined once here.
"""

from __future__ import annotations

import firedrake as fd
import numpy as np

from piddm_fem.checks import check_range
from piddm_fem.errors import PiddmError
from piddm_fem.schema import default_tasks

LU = {
    "snes_type": "ksponly",
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}
NEWTON_LU = {
    "snes_type": "newtonls",
    "snes_linesearch_type": "bt",
    "snes_max_it": 50,  # tolerances: set per solve, relative to ||F(0)|| (DiscreteProblem.solve)
    "ksp_type": "preonly",
    "pc_type": "lu",
    "pc_factor_mat_solver_type": "mumps",
}
# Krylov with algebraic multigrid: CG for symmetric positive definite Jacobians, right-preconditioned
# GMRES otherwise. Both monitor the true (unpreconditioned) residual, so that the stopping test of
# DiscreteProblem.solve, ||F(u_k)|| <= rtol ||F(0)||, reads the same quantity for every start.
# Inside Newton (nonlinear problems) the linear solves are inexact, to ksp_rtol 1e-6 of their own
# right-hand side; a linear problem's single Krylov solve stops at the test of DiscreteProblem.solve.
CG_GAMG = {"ksp_type": "cg", "pc_type": "gamg", "ksp_norm_type": "unpreconditioned",
           "ksp_rtol": 1e-6, "ksp_max_it": 1000}
GMRES_GAMG = {"ksp_type": "gmres", "pc_type": "gamg", "ksp_pc_side": "right", "ksp_rtol": 1e-6,
              "ksp_max_it": 1000}
# Where algebraic multigrid fails (transport-dominated Jacobians: space-time Burgers stalls at 1000
# GMRES + GAMG iterations), incomplete LU per process block.
GMRES_ILU = {**GMRES_GAMG, "pc_type": "bjacobi", "sub_pc_type": "ilu"}
SOLVERS = ("direct", "krylov")
SIDES = {"x0": 1, "x1": 2, "y0": 3, "y1": 4}  # Firedrake's UnitSquareMesh boundary ids


class Problem:
    """Subclasses set ``name``, ``channels``, ``unknown``, ``default_params`` and define
    ``form`` and ``sample_coefficients``; the rest has defaults.

    ``param_ranges`` maps a parameter to the interval it must lie in, written like "(0, inf)" or
    "[0, 1]"; a parameter without an entry must be a finite number; ``ordered`` lists (low, high)
    pairs that must satisfy low < high. Every value is checked when the problem is built, before
    any file is written."""

    name: str = ""
    channels: tuple[str, ...] = ()
    unknown: str = "u"
    default_params: dict = {}
    param_ranges: dict = {}
    ordered: tuple[tuple[str, str], ...] = ()  # (low, high) parameter pairs with low < high
    linear: bool = True
    spd: bool = True  # symmetric positive definite Jacobian: CG applies ("krylov" solver)
    multigrid: bool = True  # GAMG preconditions the "krylov" solver, else GMRES_ILU
    boundary: tuple[str, str] = ("dirichlet", "dirichlet")  # per axis (x, y), stored in datasets
    # Where the unknown is prescribed: ``dirichlet`` sides take ``boundary_value``; on ``data``
    # sides (e.g. t = 0 of a space-time problem) the unknown is an input, drawn by
    # ``sample_coefficients`` under the unknown's name; other sides carry the natural condition.
    dirichlet: tuple[str, ...] = ("x0", "x1", "y0", "y1")
    data: tuple[str, ...] = ()
    # What the learning side reads from the dataset (``metadata``): names, binary channels, tasks
    display_name: str = ""
    axes: tuple[str, str] = ("x", "y")
    fd_residual: str | None = None  # strong form for the finite-difference baseline (fd_residual.py)
    # DiffusionPDE's published observation weights for this PDE, where it has them: {channel: (zeta,
    # scale)}, zeta the per-step weight of the channel's observation loss in its 2000-step sampler
    # (its configs) and scale the factor of its normalised fields, x = scale * field + offset (its
    # data scripts). The guided baselines convert them to this project's units (baselines/guidance.py).
    diffusionpde_observation: dict | None = None

    def __init__(self, **params):
        unknown = set(params) - set(self.default_params)
        if unknown:
            raise PiddmError(
                f"problem {self.name!r} has no parameter(s) {sorted(unknown)}; "
                f"known: {sorted(self.default_params)}"
            )
        self.params = {**self.default_params, **params}
        for key, value in self.params.items():
            check_range(key, value, self.param_ranges.get(key, "(-inf, inf)"), f"problem {self.name!r}")
        for low, high in self.ordered:
            if not self.params[low] < self.params[high]:
                raise PiddmError(f"problem {self.name!r}: {low} = {self.params[low]:g} must be below {high} = "
                                 f"{self.params[high]:g}; e.g. --param {low}={self.default_params[low]:g} "
                                 f"--param {high}={self.default_params[high]:g}")

    @property
    def coefficients(self) -> tuple[str, ...]:
        return tuple(c for c in self.channels if c != self.unknown)

    def thresholds(self) -> dict[str, float]:
        """{channel: threshold} of binary coefficient channels (two values, split at the
        threshold); error rates and high fractions are reported for these."""
        return {}

    def tasks(self) -> dict:
        """The observation tasks, as ``piddm_fem.tasks`` reads them: {task: {"observe": {channel:
        region}, "recover": {channel: region}}}, a region being "all", {"points": p} (p random nodes
        at S = 128, scaled with S^2), {"fraction": f}, {"rows": [j, ...]} or {"columns": k} (k evenly
        spaced columns), with optional "exclude_rows". Default: ``schema.default_tasks``."""
        return default_tasks(self.channels, self.unknown)

    def metadata(self) -> dict:
        """What the learning side needs, stored with every dataset (``DatasetInfo.meta``)."""
        return {"display_name": self.display_name or self.name, "axes": list(self.axes),
                "unknown": self.unknown, "thresholds": self.thresholds(), "tasks": self.tasks(),
                "fd_residual": self.fd_residual, "diffusionpde_observation": self.diffusionpde_observation}

    def mesh(self, S: int, comm=None, reorder: bool | None = None):
        """Structured (S-1) x (S-1) quadrilateral mesh: its vertices are the S x S grid."""
        kwargs = {} if comm is None else {"comm": comm}
        return fd.UnitSquareMesh(S - 1, S - 1, quadrilateral=True, reorder=reorder, **kwargs)

    def space(self, mesh):
        return fd.FunctionSpace(mesh, "Q", 1)

    def form(self, fields: dict, v):
        """F(u, coefficients; v): a UFL 1-form, with ``fields[name]`` a Function or expression."""
        raise NotImplementedError

    def coefficient_bounds(self) -> tuple[str, float, float] | None:
        """(channel, low, high) of a coefficient that stays in [low, high], for inverse problems
        (solvers/inverse.py); None when no coefficient is bounded."""
        return None

    def boundary_value(self, mesh):
        """Dirichlet data g for the unknown on the whole boundary (UFL, may use coordinates)."""
        return fd.Constant(0.0)

    def sample_coefficients(self, S: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Coefficient channels on the grid, [S, S] each, drawn from ``rng`` only."""
        raise NotImplementedError

    @property
    def solver_parameters(self) -> dict:
        """PETSc options of the dataset solves (the "direct" solver)."""
        return self.parameters_for("direct")

    def parameters_for(self, solver: str) -> dict:
        """PETSc options for ``solver``: "direct" (MUMPS LU) or "krylov" (CG or GMRES + GAMG, GMRES + ILU
        without ``multigrid``);
        one linear solve for linear problems, Newton with line search for nonlinear ones."""
        if solver not in SOLVERS:
            raise PiddmError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        params = dict(LU if self.linear else NEWTON_LU)
        if solver == "krylov":
            for key in ("ksp_type", "pc_type", "pc_factor_mat_solver_type"):
                params.pop(key)
            params.update(CG_GAMG if self.spd else GMRES_GAMG if self.multigrid else GMRES_ILU)
        return params
