"""Inverse problems with the FEM solver in the loop: the torch FEM solve, latent-FEM gradients,
the adjoint inversion, all methods through `piddm infer`, bad input."""

import json

import firedrake as fd
import firedrake.adjoint as fa
import numpy as np
import pytest
import torch

from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.fem_solve import LinearFEMSolve
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator
from piddm_fem.solvers.generate import sample_rng
from piddm_fem.solvers.inverse import METHODS, AdjointInversion, grid_points, invert
from piddm_fem.student import load_student
from piddm_fem.tasks import observation_mask, optimize_latent


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
@pytest.mark.parametrize("reorder", [True, False])
def test_torch_fem_solve_agrees_with_firedrake(name, reorder):
    problem, S = get_problem(name), 17
    disc = DiscreteProblem(problem, S)
    solved = np.stack([disc.solve(problem.sample_coefficients(S, sample_rng(2, i)))[0] for i in range(3)])
    x = torch.tensor(solved)
    x[:, problem.channels.index(problem.unknown)] = 7.0  # ignored: replaced by the solve
    got = LinearFEMSolve(ResidualOperator(extract_operator(problem, S, reorder=reorder))).solve(x).numpy()
    assert np.abs(got - solved).max() <= 1e-10 * np.abs(solved).max()


def test_torch_fem_solve_refuses_nonlinear_forms():
    with pytest.raises(PiddmError, match="nonlinear in the unknown"):
        LinearFEMSolve(ResidualOperator(extract_operator(get_problem("reaction_diffusion"), 9)))


def _directional_check(f, x, rel, h, directions=3):
    grad, = torch.autograd.grad(f(x), x)
    for k in range(directions):
        d = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(k + 1))
        with torch.no_grad():
            fd_value = (f(x + h * d) - f(x - h * d)) / (2 * h)
        assert float((grad * d).sum()) == pytest.approx(float(fd_value), rel=rel)


def test_latent_fem_gradient_matches_finite_differences(tiny_student, darcy_file):
    """The misfit of the FEM solution at observed nodes: its gradient through the solve (float64,
    tight) and through the student from eps (the network computes in float32, looser)."""
    student, ckpt, normalizer, operator = load_student(tiny_student)
    S = ckpt["resolution"]
    truth = torch.tensor(schema.read(darcy_file, [0])[1])
    mask = observation_mask("inverse", truth.shape, ["a", "u"], get_problem("darcy").metadata(), points=20, seed=0)
    solve = LinearFEMSolve(operator).solve

    def misfit_of_fields(x):
        return ((normalizer.normalize(solve(x)) - normalizer.normalize(truth)) * mask).square().sum()

    x = truth.clone()
    x[:, 0] = 3.0 + 9.0 * torch.rand(S, S, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _directional_check(misfit_of_fields, x.requires_grad_(True), rel=1e-6, h=1e-4)

    def misfit_of_eps(eps):
        return misfit_of_fields(normalizer.denormalize(student(eps)).double())

    eps = torch.randn(1, 2, S, S, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    _directional_check(misfit_of_eps, eps, rel=2e-2, h=1e-2)
    # the optimiser uses it: 15 steps with exact physics lower the observation misfit
    before, after = (optimize_latent(student, normalizer, operator, truth.float(), mask, eps.detach(),
                                     steps=k, exact=solve)["misfit"] for k in (0, 15))
    assert float(after) < float(before)


def test_exact_physics_solves_for_the_returned_coefficients(tiny_student, darcy_file):
    """With exact physics, the returned u is the FEM solution for the returned coefficients, the
    observed ones included: with a fully observed (forward) it is the discrete truth; with 10% of
    a observed (reconstruct) the student's own u plays no part."""
    student, ckpt, normalizer, operator = load_student(tiny_student)
    truth = torch.tensor(schema.read(darcy_file, [0, 1])[1])
    solve = LinearFEMSolve(operator).solve
    eps = torch.randn(truth.shape, generator=torch.Generator().manual_seed(0))
    meta = get_problem("darcy").metadata()
    forward = observation_mask("forward", truth.shape, ["a", "u"], meta, seed=0)
    x = optimize_latent(student, normalizer, operator, truth.float(), forward, eps, steps=2, exact=solve)["x"]
    assert torch.equal(x[:, 0], truth[:, 0].float())
    assert float((x[:, 1] - truth[:, 1]).abs().max()) <= 1e-4 * float(truth[:, 1].abs().max())
    partial = observation_mask("reconstruct", truth.shape, ["a", "u"], meta, seed=0)
    partial[:, 1] = 0.0  # a observed on 10% of the nodes, u nowhere
    x = optimize_latent(student, normalizer, operator, truth.float(), partial, eps, steps=2, exact=solve)["x"]
    observed = partial[:, 0].bool()
    assert torch.equal(x[:, 0][observed], truth[:, 0].float()[observed])
    assert float((solve(x.double())[:, 1] - x[:, 1]).abs().max()) <= 1e-4 * float(x[:, 1].abs().max())


def test_adjoint_inversion_gradient_and_convergence():
    problem, S = get_problem("darcy"), 17
    disc = DiscreteProblem(problem, S)
    truth, _ = disc.solve(problem.sample_coefficients(S, sample_rng(4, 0)))
    nodes = np.zeros((S, S), bool)
    nodes[2:-2:2, 2:-2:2] = True
    inv = AdjointInversion(problem, S, grid_points(nodes), truth[1][nodes], alpha=1e-5)
    m = inv.gridmap.from_grid(inv.start(None), fd.Function(inv.V))
    with fa.set_working_tape(fa.Tape()) as tape:
        fa.continue_annotation()
        try:
            J = inv._misfit(inv._solve(m))
            rf = fa.ReducedFunctional(J, fa.Control(m, riesz_map="l2"), tape=tape)
        finally:
            fa.pause_annotation()
        h = fd.Function(inv.V)
        h.dat.data[:] = np.random.default_rng(0).standard_normal(h.dat.data.shape)
        assert fa.taylor_test(rf, m, h) > 1.9
    result = inv.run(maxiter=40)
    assert result["iterations"] > 5
    assert result["misfit"] ** 2 < 0.05 * result["history"][0] ** 2  # the data term fell 20-fold
    # and the coefficient found is the truth's (8.7% of nodes on the wrong side, 0.58x the error
    # of the constant mid value, when written)
    a = result["a"]
    assert ((a > 7.5) != (truth[0] > 7.5)).mean() < 0.2
    assert np.linalg.norm(a - truth[0]) < 0.75 * np.linalg.norm(7.5 - truth[0])
    from_truth = inv.run(truth[0], maxiter=40)
    assert from_truth["history"][0] < result["history"][0]
    for annotating in (True, False):  # the caller's annotation state and tape are left as they were
        (fa.continue_annotation if annotating else fa.pause_annotation)()
        try:
            blocks = len(fa.get_working_tape().get_blocks())
            inv.run(maxiter=1)
            assert fa.annotate_tape() == annotating and len(fa.get_working_tape().get_blocks()) == blocks
        finally:
            fa.pause_annotation()


def test_every_method_through_the_cli(cli, tiny_student, darcy_file, tmp_path):
    report = tmp_path / "inv.json"
    code, out, err = cli("infer", tiny_student, "--task", "inverse", "--data", darcy_file, "--index", "0",
                         "--index", "1", "--physics", "fem", "--adjoint-steps", "3", "--steps", "2",
                         "--restarts", "2", "--noise", "0.01", "--json", report, "--out", tmp_path / "inv.h5",
                         "--device", "cpu")
    assert code == 0, err
    data = json.loads(report.read_text())
    assert set(data["methods"]) == {"fem", "fem+adjoint"} and data["coefficient"] == "a"
    assert "error rate of a" in out
    for method in data["methods"].values():
        assert len(method["problems"]) == 2
        for key in ("error_rate_a", "rel_l2_a", "misfit", "iterations", "seconds"):
            assert key in method["summary"] and np.isfinite(method["problems"][0][key])
    code, _, err = cli("validate", tmp_path / "inv.h5", "--max-residual", "1e-10")  # a with its FEM u
    assert code == 0, err
    student, _, normalizer, operator = load_student(tiny_student)
    _, truth, _ = schema.read(darcy_file, [0, 1])
    result = invert(get_problem("darcy"), truth, METHODS, student=student, normalizer=normalizer,
                    operator=operator, steps=2, restarts=2, adjoint_steps=2)
    assert list(result["methods"]) == list(METHODS)
    for name in ("adjoint", "soft+adjoint", "fem+adjoint"):  # L-BFGS-B never ends above its start
        for h in result["methods"][name]["history"]:
            assert len(h) >= 2 and h[-1] <= h[0]
    for cold, warm in zip(result["methods"]["adjoint"]["history"], result["methods"]["soft+adjoint"]["history"]):
        assert warm[0] != cold[0]  # the student's coefficient is where the second one starts


def test_inverse_bad_input(cli, tiny_student, darcy_file, rd_student, tmp_path):
    problem = get_problem("darcy")
    with pytest.raises(PiddmError, match="outside the unit square"):
        AdjointInversion(problem, 9, np.array([[0.5, 0.5], [1.2, 0.3]]), np.ones(2), 1e-5)
    with pytest.raises(PiddmError, match="NaN"):
        AdjointInversion(problem, 9, np.array([[0.5, 0.5]]), np.array([np.nan]), 1e-5)
    with pytest.raises(PiddmError, match="at least one point"):
        AdjointInversion(problem, 9, np.zeros((0, 2)), np.zeros(0), 1e-5)
    with pytest.raises(PiddmError, match="no bounded coefficient"):
        AdjointInversion(get_problem("poisson"), 9, np.array([[0.5, 0.5]]), np.ones(1), 1e-5)
    data, _, rd = rd_student
    cases = [  # (student, task, data, options, what the one-line error says)
        (tiny_student, "inverse", darcy_file, ["--points", "0", "--physics", "fem", "--json", "a.json"], "--points 0"),
        (rd, "inverse", data, ["--physics", "fem", "--json", "b.json"], "nonlinear in the unknown"),
        (tiny_student, "inverse", data, ["--physics", "fem", "--json", "c.json"], "checkpoint trained on darcy"),
        (tiny_student, "forward", darcy_file, ["--physics", "fem", "--out", "d.h5"], "belong to --task inverse"),
        (tiny_student, "forward", darcy_file, ["--physics-norm", "h1", "--out", "e.h5"], "unknown --physics-norm 'h1'"),
        (tiny_student, "forward", darcy_file, ["--lambda", "-1", "--out", "f.h5"], "--lambda"),
        (tiny_student, "forward", darcy_file, ["--fraction", "2", "--out", "g.h5"],
         "--fraction does not apply to task forward"),
        (tiny_student, "inverse", darcy_file, ["--fraction", "0.5", "--out", "h.h5"], "--fraction does not apply"),
        (tiny_student, "inverse", darcy_file, ["--fraction", "0.5", "--physics", "fem", "--json", "j.json"],
         "--fraction does not apply"),  # the FEM-in-the-loop path too
        (tiny_student, "forward", darcy_file, ["--points", "5", "--out", "i.h5"], "--points does not apply"),
    ]
    for student, task, path, options, says in cases:
        options = [tmp_path / o if o.endswith((".json", ".h5")) else o for o in options]
        code, _, err = cli("infer", student, "--task", task, "--data", path, "--index", "0", *options)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, (options, err)
    assert not any(tmp_path.iterdir())  # nothing written half-way
