"""Firedrake solves: manufactured-solution rates, data residual, grid maps, failure handling."""

import firedrake as fd
import numpy as np
import pytest
import torch

from piddm_fem import grid, schema
from piddm_fem.errors import PiddmError
from piddm_fem.solvers import get_problem, problem_names
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator
from piddm_fem.solvers.generate import sample_rng, solve_sample
from piddm_fem.solvers.gridmap import GridMap, sample_on_grid
from piddm_fem.solvers.problem import SIDES


def manufactured(name, x):
    """Smooth coefficients and an exact solution vanishing on the boundary."""
    u = fd.sin(fd.pi * x[0]) * fd.sin(fd.pi * x[1]) * (1 + x[0] * x[1])
    coefficients = {"darcy": {"a": 2 + fd.sin(x[0]) * x[1]},
                    "poisson": {"f": fd.cos(2 * x[0]) + x[1]},
                    "helmholtz": {"f": fd.exp(x[0]) * x[1]},
                    "reaction_diffusion": {"a": 2 + fd.sin(x[0]) * x[1]},
                    "burgers": {}}[name]
    return coefficients, u


def mms_error(name, S):
    """L2 error of the Q1 solution of F(u_h) = F(u_exact) (Galerkin projection of u_exact)."""
    problem = get_problem(name)
    mesh = problem.mesh(S)
    V = problem.space(mesh)
    x = fd.SpatialCoordinate(mesh)
    coefficients, u_exact = manufactured(name, x)
    u, v = fd.Function(V), fd.TestFunction(V)
    F = problem.form({**coefficients, problem.unknown: u}, v) \
        - problem.form({**coefficients, problem.unknown: u_exact}, v)
    sides = [SIDES[side] for side in problem.dirichlet + problem.data]  # u prescribed there
    fd.solve(F == 0, u, bcs=fd.DirichletBC(V, 0, sides), solver_parameters=problem.solver_parameters)
    return fd.sqrt(fd.assemble((u - u_exact) ** 2 * fd.dx(degree=6)))


@pytest.mark.parametrize("name", problem_names())
def test_manufactured_solution_converges_at_second_order(name):
    errors = [mms_error(name, S) for S in (9, 17, 33)]
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.all(rates > 1.9) and np.all(rates < 2.2), rates


@pytest.mark.parametrize("name", problem_names())
def test_solved_sample_residual_is_at_solver_tolerance(name):
    disc = DiscreteProblem(get_problem(name), 17)
    fields, info = solve_sample(disc, seed=5, index=2)
    assert fields is not None, info
    assert info["residual_norm"] <= 1e-10
    op = ResidualOperator(extract_operator(disc.problem, 17))  # an independent evaluation: torch
    assert float(op.relative(torch.from_numpy(fields[None]))) <= 1e-10
    noisy = fields.copy()
    u = disc.problem.channels.index(disc.problem.unknown)
    noisy[u] *= 1 + 0.01 * sample_rng(0, 0).standard_normal(noisy[u].shape)
    assert disc.relative_residual(noisy) > 1e3 * max(info["residual_norm"], 1e-14)


def test_darcy_coefficient_is_binary_and_seeded():
    problem = get_problem("darcy")
    a1 = problem.sample_coefficients(33, sample_rng(7, 4))["a"]
    a2 = problem.sample_coefficients(33, sample_rng(7, 4))["a"]
    a3 = problem.sample_coefficients(33, sample_rng(7, 5))["a"]
    assert set(np.unique(a1)) == {3.0, 12.0}
    assert np.array_equal(a1, a2) and not np.array_equal(a1, a3)
    assert 0.2 < (a1 == 12.0).mean() < 0.8


def test_random_fields_follow_the_fno_recipe_of_diffusionpde():
    """Their GRF.m: idct2 of S c_kl xi_kl on the cell-centred grid, c_kl = tau^(alpha - 1) (pi^2 (k^2 +
    l^2) + tau^2)^(-alpha / 2). The same draws give the same field at our nodes, half a cell away."""
    from scipy.fft import idctn

    from piddm_fem.solvers.grf import gaussian_random_field

    S, alpha, tau = 48, 2.0, 3.0
    k = np.arange(S)
    coef = tau ** (alpha - 1) * (np.pi**2 * (k[None, :] ** 2 + k[:, None] ** 2) + tau**2) ** (-alpha / 2)
    coef[0, 0] = 0.0
    theirs = idctn(S * coef * np.random.default_rng(3).standard_normal((S, S)), norm="ortho")
    ours = gaussian_random_field(S, np.random.default_rng(3), alpha, tau)
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.995
    assert ours.std() == pytest.approx(theirs.std(), rel=0.05)
    assert (np.sign(ours) == np.sign(theirs)).mean() > 0.95  # Darcy's thresholded coefficient


@pytest.mark.parametrize("reorder", [True, False])
def test_gridmap_matches_coordinates_on_reordered_meshes(reorder):
    S = 9
    mesh = get_problem("darcy").mesh(S, reorder=reorder)
    V = fd.FunctionSpace(mesh, "Q", 1)
    x = fd.SpatialCoordinate(mesh)
    f = fd.Function(V).interpolate(x[0] + 10 * x[1])
    gm = GridMap(V, S)
    X, Y = grid.coordinates(S)
    assert np.allclose(gm.to_grid(f), X + 10 * Y, atol=1e-14)
    back = gm.from_grid(X * Y)
    assert np.allclose(back.dat.data_ro, fd.Function(V).interpolate(x[0] * x[1]).dat.data_ro)


def test_sample_on_grid_evaluates_other_spaces():
    mesh = fd.UnitSquareMesh(5, 5)  # triangles, not the grid's mesh
    x = fd.SpatialCoordinate(mesh)
    f = fd.Function(fd.FunctionSpace(mesh, "CG", 2)).interpolate(x[0] ** 2 + x[1])
    X, Y = grid.coordinates(9)
    assert np.allclose(sample_on_grid(f, 9), X**2 + Y, atol=1e-12)


def test_diverged_solve_is_recorded_as_failed(tmp_path):
    from piddm_fem.solvers.darcy import Darcy
    from piddm_fem.solvers.generate import generate

    class SingularDarcy(Darcy):
        param_ranges, ordered = {}, ()  # a = 0 lies outside Darcy's declared ranges; here it is the point

    problem = SingularDarcy(a_high=0.0, a_low=0.0)  # singular operator
    path = tmp_path / "bad.h5"
    counts = generate(problem, 2, 9, 0, path, show_progress=False)
    assert {k: counts[k] for k in ("ok", "failed", "solved_now")} == {"ok": 0, "failed": 2, "solved_now": 2}
    with __import__("h5py").File(path) as f:
        assert (f["status"][:] == schema.STATUS_FAILED).all()
        assert all(r for r in f["solver_info/reason"].asstr()[:])
        assert np.isnan(f["fields"][:]).all()


def test_unknown_problem_and_parameter():
    with pytest.raises(PiddmError, match="unknown problem"):
        get_problem("navier")
    with pytest.raises(PiddmError, match="no parameter"):
        get_problem("helmholtz", kk=2)


def _solution_and_guess(name, solver, S=17, perturbation=0.01):
    """A sample's coefficients, its solution and the solution with a smooth relative perturbation."""
    disc = DiscreteProblem(get_problem(name), S)
    coefficients = disc.problem.sample_coefficients(S, sample_rng(3, 1))
    fields, info = disc.solve(coefficients, solver=solver)
    assert fields is not None, info
    X, Y = grid.coordinates(S)
    u = fields[disc.problem.channels.index(disc.problem.unknown)]
    return disc, coefficients, fields, info, u * (1 + perturbation * np.sin(3 * X + 2 * Y))


def test_nonlinear_newton_needs_five_iterations_cold_and_fewer_warm():
    disc, a, fields, cold, guess = _solution_and_guess("reaction_diffusion", "direct")
    assert cold["newton_iterations"] >= 5, cold
    assert cold["residual_norm"] <= 1e-10
    u = fields[1]
    assert 0.3 < u.max() < 3.0  # u of order one, where kappa u^3 matters
    from_solution = disc.solve(a, initial_guess=u)[1]
    assert from_solution["newton_iterations"] == 0, from_solution  # already at the stopping test
    _, warm = disc.solve(a, initial_guess=guess)
    assert 1 <= warm["newton_iterations"] <= cold["newton_iterations"] // 2, (cold, warm)
    # a Function works as the initial guess too, on the same or another mesh
    other = fd.FunctionSpace(fd.UnitSquareMesh(16, 16), "CG", 1)  # triangles with the grid's nodes
    g = disc.gridmap.from_grid(guess)
    assert disc.solve(a, initial_guess=g)[1]["newton_iterations"] == warm["newton_iterations"]
    g_other = fd.Function(other).interpolate(fd.assemble(fd.interpolate(g, other)))
    assert disc.solve(a, initial_guess=g_other)[1]["newton_iterations"] == warm["newton_iterations"]


@pytest.mark.parametrize("name, ksp", [("darcy", "cg"), ("poisson", "cg"), ("helmholtz", "gmres"),
                                       ("reaction_diffusion", "cg"), ("burgers", "gmres")])
def test_krylov_solver_agrees_with_direct_and_stops_relative_to_the_load(name, ksp):
    disc, coefficients, direct, _, guess = _solution_and_guess(name, "direct", S=33)
    fields, cold = disc.solve(coefficients, solver="krylov")
    assert disc.solver("krylov").snes.ksp.getType() == ksp
    assert fields is not None, cold
    u = disc.problem.channels.index(disc.problem.unknown)
    assert np.abs(fields[u] - direct[u]).max() <= 1e-7 * np.abs(direct[u]).max()
    _, warm = disc.solve(coefficients, initial_guess=guess, solver="krylov")
    assert warm["iterations"] < cold["iterations"], (cold, warm)
    _, exact = disc.solve(coefficients, initial_guess=direct[u], solver="krylov")
    assert exact["iterations"] == 0, exact


def test_unknown_solver_is_an_error():
    with pytest.raises(PiddmError, match="unknown solver"):
        get_problem("darcy").parameters_for("multigrid")
