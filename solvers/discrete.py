"""A Problem discretised at one resolution: mesh, Functions, form, solver and the FEM residual.

Built once per (problem, S) and reused for every sample, so forms compile once. The residual
follows docs/residual.md: the assembled weak residual with Dirichlet rows replaced by u - g
("raw"), divided by the lumped mass on the other rows ("scaled", strong-form units), and its
relative norm ||s(x)|| / ||s(x with u = 0)|| in the grid RMS norm.
"""

from __future__ import annotations

import time

import firedrake as fd
import numpy as np
from firedrake.exceptions import ConvergenceError
from firedrake.petsc import PETSc

from piddm_fem.errors import PiddmError
from piddm_fem.solvers.gridmap import GridMap
from piddm_fem.solvers.problem import SIDES


STOP_RTOL = 1e-12  # every solve stops at ||F(u_k)|| <= STOP_RTOL * ||F(0)|| (see DiscreteProblem.solve)


def reason_name(reason: int, owner) -> str:
    """PETSc's name for a converged/diverged reason code (SNES or KSP)."""
    names = {v: k for k, v in vars(owner.ConvergedReason).items() if isinstance(v, int)}
    return names.get(int(reason), str(reason))


def relative_norm(s: np.ndarray, s0: np.ndarray) -> float:
    """||s|| / ||s0|| in the grid RMS norm (s0 is the residual at u = 0, the load)."""
    ref = np.sqrt(np.mean(s0**2))
    return float(np.sqrt(np.mean(s**2)) / (ref if ref > 0 else 1.0))


class DiscreteProblem:
    """One problem on the S x S grid (serial mesh on ``comm``, COMM_SELF by default)."""

    def __init__(self, problem, S: int, comm=None, reorder: bool | None = None):
        self.problem, self.S = problem, S
        self.mesh = problem.mesh(S, comm=fd.COMM_SELF if comm is None else comm, reorder=reorder)
        self.V = problem.space(self.mesh)
        self.gridmap = GridMap(self.V, S)
        self.fields = {name: fd.Function(self.V, name=name) for name in problem.channels}
        self.v = fd.TestFunction(self.V)
        self.F = problem.form(self.fields, self.v)
        self.g = fd.Function(self.V).interpolate(problem.boundary_value(self.mesh))
        self.g_data = fd.Function(self.V)  # the unknown on the data sides, set per solve
        sides = [SIDES[side] for side in problem.dirichlet]
        self.bcs = [fd.DirichletBC(self.V, self.g, sides)] if sides else []
        self.bc_mask = np.zeros(S * S, bool)  # Dirichlet rows: u - g
        for bc in self.bcs:
            self.bc_mask[self.gridmap.index[bc.nodes]] = True
        self.data_mask = np.zeros(S * S, bool)  # rows where the unknown is data: residual 0
        if problem.data:
            data_bc = fd.DirichletBC(self.V, self.g_data, [SIDES[side] for side in problem.data])
            self.data_mask[self.gridmap.index[data_bc.nodes]] = True
            self.data_mask &= ~self.bc_mask
            self.bcs.append(data_bc)
        self.g_grid = self.gridmap.to_grid(self.g).ravel()
        mass = fd.assemble(self.v * fd.dx)
        self.lumped_mass = self.gridmap.to_grid(mass).ravel()
        self._solvers = {}

    # -- grid <-> Functions -------------------------------------------------------------------
    def set_fields(self, fields: np.ndarray) -> None:
        """Load a grid sample [C, S, S] into the Functions (channel order of the problem)."""
        for c, name in enumerate(self.problem.channels):
            self.gridmap.from_grid(fields[c], self.fields[name])

    def get_fields(self) -> np.ndarray:
        return np.stack([self.gridmap.to_grid(self.fields[n]) for n in self.problem.channels])

    # -- residual ------------------------------------------------------------------------------
    def _assembled_residual(self) -> np.ndarray:
        """assemble(F) of the current Functions on the grid [S*S], Dirichlet rows u - g and data
        rows 0 (the unknown is an input there)."""
        r = self.gridmap.to_grid(fd.assemble(self.F)).ravel()
        u = self.gridmap.to_grid(self.fields[self.problem.unknown]).ravel()
        return np.where(self.bc_mask, u - self.g_grid, np.where(self.data_mask, 0.0, r))

    def raw_residual(self, fields: np.ndarray) -> np.ndarray:
        """assemble(F) on the grid [S*S], Dirichlet rows replaced by u - g."""
        self.set_fields(fields)
        return self._assembled_residual()

    def scaled_residual(self, fields: np.ndarray) -> np.ndarray:
        r = self.raw_residual(fields)
        return np.where(self.bc_mask, r, r / self.lumped_mass)

    def relative_residual(self, fields: np.ndarray) -> float:
        s = self.scaled_residual(fields)
        return relative_norm(s, self.scaled_residual(self.load_fields(fields)))

    def load_fields(self, fields: np.ndarray) -> np.ndarray:
        """The fields with the unknown set to zero off its data rows: the residual there is the
        load, the denominator of the relative residual."""
        load = np.array(fields, dtype=float, copy=True)
        c = self.problem.channels.index(self.problem.unknown)
        load[c] = np.where(self.data_mask, load[c].ravel(), 0.0).reshape(load[c].shape)
        return load

    # -- solve ---------------------------------------------------------------------------------
    def solver(self, kind: str = "direct"):
        """The (cached) NonlinearVariationalSolver for ``kind``: "direct" or "krylov"."""
        if kind not in self._solvers:
            params = self.problem.parameters_for(kind)
            u = self.fields[self.problem.unknown]
            vp = fd.NonlinearVariationalProblem(self.F, u, bcs=self.bcs)
            self._solvers[kind] = fd.NonlinearVariationalSolver(
                vp, solver_parameters=params, options_prefix=f"piddm_{self.problem.name}_{kind}_")
        return self._solvers[kind]

    def solve(self, coefficients: dict[str, np.ndarray], initial_guess=None, solver: str = "direct",
              tol: float = 1e-8, rtol: float = STOP_RTOL):
        """Solve for the unknown given coefficient grids: (fields [C, S, S] or None, info).

        ``initial_guess`` (a grid [S, S] or a Function) is where Newton or the Krylov method
        starts; None starts from u = 0. Every solver stops when ||F(u_k)|| <= rtol ||F(0)||, the
        residual of the load (Dirichlet rows u - g, l2 norm): relative to ||b||, not to the
        initial residual, so a better start can stop earlier. A sample is kept only when its
        relative residual (docs/residual.md) is <= ``tol``. ``info`` holds the Newton and linear
        iterations, the seconds, PETSc's reason and the relative residual."""
        for name in self.problem.coefficients:
            self.gridmap.from_grid(coefficients[name], self.fields[name])
        u = self.fields[self.problem.unknown]
        u.assign(0.0)
        if self.problem.data:
            if self.problem.unknown not in coefficients:
                raise PiddmError(f"{self.problem.name}: pass the {self.problem.unknown!r} data on "
                                 f"sides {', '.join(self.problem.data)} with the coefficients")
            data = np.where(self.data_mask, np.asarray(coefficients[self.problem.unknown]).ravel(), 0.0)
            self.gridmap.from_grid(data, self.g_data)
            u.assign(self.g_data)
        b_norm = float(np.linalg.norm(self._assembled_residual()))
        if initial_guess is not None:
            if isinstance(initial_guess, fd.Function) and initial_guess.function_space() == self.V:
                u.assign(initial_guess)
            elif isinstance(initial_guess, fd.Function):  # another mesh or space
                u.assign(fd.assemble(fd.interpolate(initial_guess, self.V)))
            else:
                self.gridmap.from_grid(initial_guess, u)
        t0 = time.perf_counter()
        nvs = self.solver(solver)
        snes = nvs.snes
        atol = max(rtol * b_norm, np.finfo(float).tiny)
        snes.setTolerances(rtol=0.0, atol=atol, stol=0.0)
        if self.problem.linear and solver == "krylov":
            snes.ksp.setTolerances(rtol=0.0, atol=atol)
        try:
            nvs.solve()
            reason = reason_name(snes.getConvergedReason(), snes)
            ok = snes.getConvergedReason() > 0 and snes.ksp.getConvergedReason() >= 0
            if not ok:
                reason = f"{reason}/{reason_name(snes.ksp.getConvergedReason(), snes.ksp)}"
        except ConvergenceError as exc:
            ok, reason = False, str(exc).splitlines()[0]
        except PETSc.Error as exc:  # e.g. a singular matrix in MUMPS: rebuild the solver next time
            self._solvers.pop(solver, None)
            detail = [line for line in str(exc).splitlines() if "error" in line.lower()]
            ok, reason = False, f"PETSc error: {(detail or [str(exc)])[-1].strip()[:200]}"
        info = {"iterations": int(snes.getLinearSolveIterations()),
                "newton_iterations": int(snes.getIterationNumber()),
                "time": time.perf_counter() - t0, "solver": solver,
                "reason": reason, "residual_norm": float("nan")}
        if not ok:
            return None, info
        fields = self.get_fields()
        if not np.isfinite(fields).all():
            info["reason"] = "non-finite solution"
            return None, info
        info["residual_norm"] = self.relative_residual(fields)
        if not info["residual_norm"] <= tol:
            info["reason"] = f"relative residual {info['residual_norm']:.2e} above {tol:g}"
            return None, info
        return fields, info
