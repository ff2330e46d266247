"""The student back in Firedrake: a fast surrogate that speaks Functions (docs/surrogate.md).

    surrogate = Surrogate.load("student/")              # student, normaliser, operator, Problem
    fields = surrogate.sample(8, seed=0)                # [{"a": Function, "u": Function}, ...]
    u = surrogate.predict({"a": a}, V=V)                # Algorithm 3's forward task, u in V
    surrogate.warm_start(u, {"a": a})                   # initial guess for solve(F == 0, u, ...)

Functions are Q1 on the Problem's structured mesh at the student's resolution S, so the numbers
are the grid values `piddm sample` writes. Coefficients given on another mesh or space are
interpolated onto the student's grid (VertexOnlyMesh point evaluation); a result asked for in
another space ``V`` is interpolated into it. This module bridges the two sides, so it imports
both Firedrake and torch; the core ``piddm_fem`` package still imports without Firedrake.
"""

from __future__ import annotations

import firedrake as fd
import numpy as np

from piddm_fem.errors import PiddmError
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.gridmap import sample_on_grid
from piddm_fem.tasks import LAMBDA_INFER, RESTARTS, infer_masked, observation_mask, task_spec


class Surrogate:
    """A distilled student with its normaliser, residual operator and Firedrake Problem."""

    def __init__(self, student, ckpt: dict, normalizer, operator, problem, where=""):
        self.student, self.ckpt, self.normalizer, self.operator = student, ckpt, normalizer, operator
        self.problem, self.S = problem, int(ckpt["resolution"])
        self.disc = DiscreteProblem(problem, self.S)
        self.mesh, self.V = self.disc.mesh, self.disc.V
        self.where = where

    @classmethod
    def load(cls, student_dir, device: str = "auto") -> "Surrogate":
        """The student in ``student_dir`` (a run directory or checkpoint) on ``device``, with the
        Problem rebuilt from the checkpoint's problem name and parameters."""
        from piddm_fem.student import load_student
        from piddm_fem.teacher import resolve_device

        student, ckpt, normalizer, operator = load_student(student_dir, resolve_device(device))
        problem = get_problem(ckpt["problem"], **ckpt.get("params", {}))
        return cls(student, ckpt, normalizer, operator, problem, where=str(student_dir))

    @property
    def channels(self) -> list[str]:
        return list(self.problem.channels)

    def check_matches(self, problem, S: int) -> None:
        """Raise unless this student was trained on ``problem`` (name and parameters) at S."""
        have = (self.problem.name, dict(self.problem.params), self.S)
        if have != (problem.name, dict(problem.params), int(S)):
            raise PiddmError(f"student {self.where} was trained on {have[0]} S={have[2]} {have[1]}, not "
                             f"{problem.name} S={S} {dict(problem.params)}; use a student of this "
                             "problem and grid")

    # -- grid <-> Functions -------------------------------------------------------------------
    def functions(self, fields: np.ndarray) -> dict[str, fd.Function]:
        """Grid fields [C, S, S] as named Q1 Functions on the student's mesh."""
        return {name: self.disc.gridmap.from_grid(fields[c], fd.Function(self.V, name=name))
                for c, name in enumerate(self.channels)}

    def inputs(self) -> list[str]:
        """The channels a prediction is given: those the forward task observes, i.e. the
        coefficients, or the unknown's data where it has some (Burgers' initial condition)."""
        return list(task_spec(self.problem.metadata(), "forward")["observe"])

    def input_grid(self, coefficients: dict) -> np.ndarray:
        """[C, S, S] with the input channels (``inputs``) filled from Functions (any mesh covering
        the unit square, any scalar space) or [S, S] arrays, as ``Problem.sample_coefficients``
        gives them, and the others zero (the forward task reads only what it observes)."""
        missing = [c for c in self.inputs() if c not in coefficients]
        if missing:
            raise PiddmError(f"inputs {missing} missing; {self.problem.name} needs {self.inputs()} as "
                             "Functions or [S, S] arrays")
        grid = np.zeros((len(self.channels), self.S, self.S))
        for name in self.inputs():
            grid[self.channels.index(name)] = self._on_grid(name, coefficients[name])
        return grid

    def _on_grid(self, name: str, value) -> np.ndarray:
        if isinstance(value, fd.Function):
            if value.ufl_shape != ():
                raise PiddmError(f"input {name!r} is a Function of shape {value.ufl_shape}; give a scalar "
                                 "Function (or an [S, S] grid array)")
            if value.function_space() == self.V:
                values = self.disc.gridmap.to_grid(value)
            else:
                try:
                    values = sample_on_grid(value, self.S)
                except fd.VertexOnlyMeshMissingPointsError:
                    raise PiddmError(f"input {name!r} lives on a mesh that does not cover the "
                                     "unit square; give it on a mesh of [0, 1]^2") from None
        else:
            values = np.asarray(value, dtype=float)
            if values.shape != (self.S, self.S):
                raise PiddmError(f"input {name!r} has shape {values.shape}; give a Function or "
                                 f"an [{self.S}, {self.S}] grid array")
        if not np.isfinite(values).all():
            raise PiddmError(f"input {name!r} contains NaN or Inf; pass finite values")
        return values

    def _in_space(self, values: np.ndarray, V, name: str) -> fd.Function:
        f = self.disc.gridmap.from_grid(values, fd.Function(self.V, name=name))
        if V is None or V == self.V:
            return f
        if V.mesh() is self.mesh:
            return fd.Function(V, name=name).interpolate(f)
        return fd.Function(V, name=name).assign(fd.assemble(fd.interpolate(f, V)))

    # -- the surrogate ---------------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0, refine: int = 0, lambda_infer: float = LAMBDA_INFER,
               batch: int = 64) -> list[dict[str, fd.Function]]:
        """``n`` joint samples as Functions: PIDDM-1, or PIDDM-ref with ``refine`` steps. The
        values are those `piddm sample --seed SEED --refine REFINE` writes."""
        from piddm_fem.student import sample_fields

        stats = sample_fields(self.student, self.ckpt, self.normalizer, self.operator, n, seed, refine,
                              lambda_infer, batch)
        return [self.functions(x) for x in stats["fields"]]

    def predict(self, coefficients, steps: int = 0, restarts: int = RESTARTS, lam: float | None = None, seed: int = 0,
                V=None, norm: str | None = None):
        """The unknown for ``coefficients`` (a dict of Functions or grids of the problem's
        ``inputs``, or a list of such dicts, predicted in one batch) by Algorithm 3's forward
        task: ``steps`` Adam steps on eps with the physics penalty in ``norm`` (None: the
        operator's natural norm) weighted by ``lam`` (None: the norm's default,
        ``tasks.TASK_LAMBDA``), ensemble mean of ``restarts``; ``steps=0`` is one student call on
        the best-fitting restart. Returns a Function (a list for a list) in ``V``, by default Q1
        on the student's mesh."""

        many = isinstance(coefficients, (list, tuple))
        sets = list(coefficients) if many else [coefficients]
        if not sets:
            raise PiddmError("no coefficient sets given; pass a dict or a non-empty list of dicts")
        observed = np.stack([self.input_grid(c) for c in sets])
        unknown = self.channels.index(self.problem.unknown)
        mask = observation_mask("forward", observed.shape, self.channels, self.problem.metadata())
        result = infer_masked(self.student, self.normalizer, self.operator, observed, mask, steps=steps,
                              lam=lam, norm=norm, restarts=restarts, seed=seed)
        out = [self._in_space(m[unknown].numpy(), V, self.problem.unknown) for m in result["mean"]]
        return out if many else out[0]

    def warm_start(self, u: fd.Function, coefficients, **predict_options) -> fd.Function:
        """Write the prediction for ``coefficients`` into ``u`` (any scalar space) and return it,
        ready for ``solve(F == 0, u, ...)`` or a NonlinearVariationalSolver."""
        return u.assign(self.predict(coefficients, V=u.function_space(), **predict_options))
