"""Inverse problems with the FEM solver in the loop (docs/inverse.md).

Recover a problem's bounded coefficient (Darcy's a in [a_low, a_high]) from point observations of
u. Three families, all evaluated the same way (``evaluate``):

- ``AdjointInversion``: the classical reduced-functional inversion with pyadjoint. The control m
  is a Q1 Function, a = a_low + (a_high - a_low) sigmoid(m) stays in range, the misfit is taken at
  the observation points through a VertexOnlyMesh, an H1 seminorm regularises m, and
  ``minimize(..., method="L-BFGS-B")`` optimises. It starts from a constant (m = 0, the midpoint)
  or from any estimate of a (e.g. the student's).
- Algorithm 3 with the soft residual penalty (``tasks.infer_masked``), the student alone.
- Latent inversion with exact physics: the student's eps optimised so that the FEM solution for
  its coefficient a(eps) matches the observations (``tasks.infer_masked(exact=LinearFEMSolve)``,
  torch only); the student's own u is not used.
"""

from __future__ import annotations

import time

import firedrake as fd
import firedrake.adjoint as fa
import numpy as np
from scipy.special import logit

from piddm_fem import grid
from piddm_fem.errors import PiddmError
from piddm_fem.solvers import get_problem, problem_names
from piddm_fem.solvers.gridmap import GridMap
from piddm_fem.solvers.problem import SIDES
from piddm_fem.tasks import RESTARTS, TASK_STEPS, infer_masked, observation_mask

# The regularisation weight alpha of the H1 term, per relative observation noise level, chosen on
# calibration problems from the training split by benchmarks/inverse.py --calibrate (docs/inverse.md).
ALPHA = {0.0: 1e-6, 0.01: 1e-6}
MAXITER = 100


def alpha_for(noise: float) -> float:
    """The documented regularisation weight for a relative noise level (nearest calibrated one)."""
    return ALPHA[min(ALPHA, key=lambda level: abs(level - noise))]


def check_observations(points: np.ndarray, values: np.ndarray) -> None:
    points, values = np.asarray(points, float), np.asarray(values, float)
    if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] == 0:
        raise PiddmError(f"observation points have shape {points.shape}; give at least one point as [K, 2]")
    if values.shape != (points.shape[0],):
        raise PiddmError(f"{values.shape[0] if values.ndim else 0} observed values for {points.shape[0]} "
                         "points; give one value per point")
    outside = ~((points >= -1e-12) & (points <= 1 + 1e-12)).all(axis=1)
    if outside.any():
        raise PiddmError(f"observation point {points[np.flatnonzero(outside)[0]].tolist()} (and "
                         f"{int(outside.sum()) - 1} more) lies outside the unit square; drop it")
    if not np.isfinite(values).all():
        raise PiddmError("observations contain NaN or Inf; remove those points")


def bounded_coefficient(problem) -> tuple[str, float, float]:
    bounds = problem.coefficient_bounds()
    if bounds is None:
        bounded = [name for name in problem_names() if get_problem(name).coefficient_bounds() is not None]
        raise PiddmError(f"{problem.name} has no bounded coefficient to invert; use {' or '.join(bounded)}")
    return bounds


class AdjointInversion:
    """min over m of 1/(2K) sum_k ((u(x_k) - d_k) / s)^2 + alpha/2 int |grad m|^2 dx, with
    s = RMS(d), u the FEM solution for a(m), K observation points. Misfits are reported as the
    relative RMS misfit sqrt(1/K sum_k (u(x_k) - d_k)^2) / s, the square root of twice the data term."""

    def __init__(self, problem, S: int, points, values, alpha: float):
        check_observations(points, values)
        self.name, self.low, self.high = bounded_coefficient(problem)
        self.problem, self.S, self.alpha = problem, S, float(alpha)
        self.points, self.values = np.asarray(points, float), np.asarray(values, float)
        self.scale = float(np.sqrt(np.mean(self.values**2))) or 1.0
        self.mesh = problem.mesh(S)
        self.V = problem.space(self.mesh)
        self.gridmap = GridMap(self.V, S)
        self.vom = fd.VertexOnlyMesh(self.mesh, self.points, redundant=True)
        self.P0 = fd.FunctionSpace(self.vom, "DG", 0)
        given = fd.Function(fd.FunctionSpace(self.vom.input_ordering, "DG", 0))
        given.dat.data[:] = self.values
        self.d = fd.Function(self.P0).interpolate(given)
        self.bc = fd.DirichletBC(self.V, problem.boundary_value(self.mesh), [SIDES[s] for s in problem.dirichlet])

    def coefficient(self, m) -> fd.Function:
        """a(m) interpolated into Q1: nodal values, as on the grid."""
        return fd.Function(self.V).interpolate(self.low + (self.high - self.low) / (1 + fd.exp(-m)))

    def _solve(self, m) -> fd.Function:
        u, v = fd.Function(self.V), fd.TestFunction(self.V)
        fields = {self.name: self.coefficient(m), self.problem.unknown: u}
        fd.solve(self.problem.form(fields, v) == 0, u, bcs=self.bc,
                 solver_parameters=self.problem.solver_parameters)
        return u

    def _misfit(self, u):
        u_obs = fd.assemble(fd.interpolate(u, self.P0))
        return fd.assemble((u_obs - self.d) ** 2 * fd.dx(domain=self.vom)) / (2 * len(self.values) * self.scale**2)

    def start(self, a_grid=None) -> np.ndarray:
        """m on the grid for a start a (clipped 1% inside the bounds); None is the midpoint."""
        if a_grid is None:
            return np.zeros((self.S, self.S))
        t = (np.asarray(a_grid, float) - self.low) / (self.high - self.low)
        return logit(np.clip(t, 0.01, 0.99))

    def run(self, a_start=None, maxiter: int = MAXITER) -> dict:
        """L-BFGS-B from ``a_start`` (grid [S, S] or None). Returns the recovered a on the grid,
        the iterations, the relative RMS misfit after every iteration and the seconds. Records on
        a tape of its own; the caller's tape and annotation state are as they were."""
        was_annotating = fa.annotate_tape()
        try:
            return self._run(a_start, maxiter)
        finally:
            (fa.continue_annotation if was_annotating else fa.pause_annotation)()

    def _run(self, a_start, maxiter: int) -> dict:
        t0 = time.perf_counter()
        m = self.gridmap.from_grid(self.start(a_start), fd.Function(self.V, name="m"))
        with fa.set_working_tape(fa.Tape()) as tape:
            fa.continue_annotation()
            misfit = self._misfit(self._solve(m))
            J = misfit + fd.assemble(0.5 * self.alpha * fd.inner(fd.grad(m), fd.grad(m)) * fd.dx)
            evaluated = [np.sqrt(2 * float(misfit))]  # the relative RMS misfit of every evaluation

            def record(j, control):  # read off the tape: no extra solve
                evaluated.append(np.sqrt(2 * float(misfit.block_variable.saved_output)))

            # l2 Riesz map: SciPy optimises the coefficient vector, so it needs that gradient
            rf = fa.ReducedFunctional(J, fa.Control(m, riesz_map="l2"), tape=tape, eval_cb_post=record)
            fa.pause_annotation()
            history, current = [evaluated[0]], fd.Function(self.V)

            def callback(xk):  # after each iteration; its last evaluation was at the new iterate
                current.dat.data[:] = xk
                history.append(evaluated[-1])

            try:
                m_opt = fa.minimize(rf, method="L-BFGS-B", callback=callback,
                                    options={"maxiter": maxiter, "ftol": 1e-14, "gtol": 1e-10})
            except Exception as exc:  # SciPy stopping short (e.g. maxiter) raises; keep the last iterate
                if "SciPy" not in type(exc).__name__:
                    raise
                m_opt = current if len(history) > 1 else m
        return {"a": self.gridmap.to_grid(self.coefficient(m_opt)), "iterations": len(history) - 1,
                "misfit": history[-1], "history": history, "seconds": time.perf_counter() - t0}


def grid_points(mask: np.ndarray) -> np.ndarray:
    """[K, 2] coordinates (x, y) of the True nodes of an [S, S] grid mask."""
    X, Y = grid.coordinates(mask.shape[0])
    return np.column_stack([X[mask], Y[mask]])


METHODS = ("adjoint", "soft", "soft+adjoint", "fem", "fem+adjoint")


def noisy_observations(truth: np.ndarray, mask: np.ndarray, unknown: int, noise: float, seed: int) -> np.ndarray:
    """truth with relative Gaussian noise on the observed unknown: sigma = noise x RMS of the
    observed values, drawn per problem n from (seed, n, 1)."""
    observed = np.array(truth, dtype=float, copy=True)
    if noise > 0:
        for n in range(len(observed)):
            nodes = mask[n, unknown]
            values = observed[n, unknown][nodes]
            rng = np.random.default_rng([seed, n, 1])
            observed[n, unknown][nodes] = values + noise * np.sqrt(np.mean(values**2)) * rng.standard_normal(values.size)
    return observed


def invert(problem, truth: np.ndarray, methods=METHODS, *, student=None, normalizer=None, operator=None,
           seed: int = 0, noise: float = 0.0, points: int | None = None, steps: int = TASK_STEPS,
           restarts: int = RESTARTS, lam: float | None = None, adjoint_steps: int = MAXITER,
           alpha: float | None = None, norm: str | None = None) -> dict:
    """Recover the bounded coefficient of the N ground-truth samples ``truth`` [N, C, S, S] from
    ``points`` observed nodes of the unknown (Algorithm 3's inverse masks and seeds), with each of
    ``methods``. ``misfit`` is the relative RMS misfit at the observed nodes of the FEM solution
    for the recovered coefficient (the same number for every method). Returns {"mask",
    "observed", "alpha", "noise", "methods": {name: {"a" [N, S, S], "fields" [N, C, S, S]
    (recovered coefficient and its FEM solution), "history" (adjoint runs: the relative RMS misfit
    after every L-BFGS iteration, per problem),
    "problems": [{error_rate_<c> (with _off_interfaces and _at_interfaces), rel_l2_<c>, misfit,
    iterations, seconds}], "summary"}}, "coefficient":
    c, the recovered coefficient's channel name}; the error rate splits at the problem's threshold
    for c (``Problem.thresholds``), else between its two values."""
    from piddm_fem import metrics
    from piddm_fem.solvers.discrete import DiscreteProblem

    unknown_methods = [m for m in methods if m not in METHODS]
    if unknown_methods:
        raise PiddmError(f"unknown inverse method(s) {unknown_methods}; choose from {', '.join(METHODS)}")
    name, low, high = bounded_coefficient(problem)
    channels = list(problem.channels)
    c, u = channels.index(name), channels.index(problem.unknown)
    N, _, S, _ = truth.shape
    alpha = alpha_for(noise) if alpha is None else alpha
    mask = observation_mask("inverse", truth.shape, channels, problem.metadata(), points=points,
                            seed=seed).numpy().astype(bool)
    observed = noisy_observations(truth, mask, u, noise, seed)
    disc = DiscreteProblem(problem, S)
    estimates = {}

    def student_estimate(physics: str):
        if student is None:
            raise PiddmError(f"method {physics!r} needs a student; pass one")
        exact = None
        if physics == "fem":
            from piddm_fem.fem_solve import LinearFEMSolve

            exact = LinearFEMSolve(operator).solve
        result = infer_masked(student, normalizer, operator, observed, mask, steps=steps, lam=lam,
                              norm=norm, restarts=restarts, seed=seed, exact=exact)
        return result["mean"][:, c].numpy(), np.full(N, steps), np.full(N, result["seconds"] / N)

    def adjoint_from(key, start):
        a, its, secs = [], [], []
        for n in range(N):
            inv = AdjointInversion(problem, S, grid_points(mask[n, u]), observed[n, u][mask[n, u]], alpha)
            r = inv.run(None if start is None else start[n], maxiter=adjoint_steps)
            a.append(r["a"]), its.append(r["iterations"]), secs.append(r["seconds"])
            histories.setdefault(key, []).append(r["history"])
        return np.stack(a), np.array(its), np.array(secs)

    histories: dict = {}
    out = {"mask": mask, "observed": observed, "methods": {}, "alpha": alpha, "noise": noise, "coefficient": name}
    threshold = problem.thresholds().get(name, (low + high) / 2)
    for key in methods:
        base, _, then = key.partition("+")
        if base == "adjoint":
            a, its, secs = adjoint_from(key, None)
        else:
            a, its, secs = estimates[base] if base in estimates else student_estimate(base)
            estimates[base] = (a, its, secs)
            if then:
                a2, its2, secs2 = adjoint_from(key, a)
                a, its, secs = a2, its2, secs + secs2
        x = np.full_like(truth, np.nan)  # the recovered coefficient with its FEM solution
        misfit = np.full(N, np.nan)
        for n in range(N):  # the data misfit of the FEM solution for the recovered coefficient
            fields, _ = disc.solve({name: a[n]})
            x[n, c] = a[n]
            if fields is None:
                continue
            x[n] = fields
            d, got = observed[n, u][mask[n, u]], fields[u][mask[n, u]]
            misfit[n] = np.sqrt(np.mean((got - d) ** 2)) / np.sqrt(np.mean(d**2))
        errors = {**metrics.binary_errors(x, truth, c, name, threshold),
                  f"rel_l2_{name}": metrics.relative_l2(x, truth, c), "misfit": misfit,
                  "iterations": its.astype(float), "seconds": secs}
        out["methods"][key] = {
            "a": a, "fields": x, "history": histories.get(key),
            "problems": [{k: float(v[n]) for k, v in errors.items()} for n in range(N)],
            "summary": {k: metrics.summarize(v[np.isfinite(v)]) for k, v in errors.items()}}
    return out


def iterations_to_reach(history, target: float) -> int | None:
    """The first iteration whose misfit is <= target (None if never)."""
    hits = [k for k, value in enumerate(history) if value <= target]
    return hits[0] if hits else None
