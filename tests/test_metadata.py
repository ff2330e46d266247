"""Problem metadata stored with the data (issue 10): Burgers in space-time, task masks, the
finite-difference residual declared by each problem, and files written before the metadata."""

import json

import h5py
import numpy as np
import pytest
import torch

from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.fd_residual import fd_residual
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers import get_problem, problem_names
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator
from piddm_fem.solvers.generate import sample_rng, solve_sample
from piddm_fem.tasks import observation_mask, recovery_mask, task_errors


def test_burgers_sample_keeps_its_initial_condition_and_the_maximum_principle():
    problem, S = get_problem("burgers"), 33
    disc = DiscreteProblem(problem, S)
    for index in range(3):
        u0 = problem.sample_coefficients(S, sample_rng(4, index))["u"][0]
        fields, info = solve_sample(disc, 4, index)
        assert fields is not None and info["residual_norm"] <= 1e-10, info
        u = fields[0]
        assert np.array_equal(u[0], u0)  # t = 0 is the drawn initial condition, untouched
        assert np.abs(u[:, [0, -1]]).max() == 0.0  # Dirichlet in x
        assert np.abs(u).max() <= np.abs(u0).max() + 1e-12  # no overshoot: the data is not oscillating
        assert np.abs(u[-1]).max() < 0.9 * np.abs(u0).max()  # viscosity and shocks dissipate


def test_a_burgers_solve_that_does_not_converge_is_stored_as_failed_with_its_reason(tmp_path):
    from piddm_fem.solvers.generate import generate

    problem = get_problem("burgers", nu=1e-4, sigma=500.0)  # a steep shock on a coarse grid
    fields, info = solve_sample(DiscreteProblem(problem, 17), 0, 0)
    assert fields is None and "failed to converge" in info["reason"]
    generate(problem, 1, 17, 0, tmp_path / "b.h5", show_progress=False)
    with h5py.File(tmp_path / "b.h5") as f:
        assert f["status"][0] == schema.STATUS_FAILED and "failed to converge" in f["solver_info/reason"][0].decode()


def test_data_rows_carry_no_residual_and_the_load_keeps_them():
    problem, S = get_problem("burgers"), 9
    op = ResidualOperator(extract_operator(problem, S))
    assert op.data_mask.reshape(S, S)[0, 1:-1].all() and op.data_mask.sum() == S - 2
    assert op.bc_mask.reshape(S, S)[:, [0, -1]].all() and not op.bc_mask.reshape(S, S)[-1, 1:-1].any()
    x = torch.randn(2, 1, S, S, dtype=torch.float64)
    assert (op.raw(x)[:, 0, 0, 1:-1] == 0).all()
    # the load is the residual of the initial condition alone: nonzero, and u = 0 gives no load
    assert (op.load(x).abs().sum((1, 2, 3)) > 0).all()
    assert op.load(torch.zeros_like(x)).abs().max() == 0


@pytest.mark.parametrize("name", problem_names())
def test_the_tasks_natural_norm_is_dual_only_where_u_is_dirichlet_on_the_whole_boundary(name):
    from piddm_fem.dual_norm import PhysicsPenalty, natural_norm

    op = ResidualOperator(extract_operator(get_problem(name), 9))
    expected = "l2" if name == "burgers" else "dual"  # Burgers: an initial row and an open final time
    assert natural_norm(op) == expected and PhysicsPenalty(op, None).norm == expected


def test_task_masks_and_errors_follow_the_metadata():
    S = 17
    meta = get_problem("burgers").metadata()
    forward = observation_mask("forward", (2, 1, S, S), ["u"], meta)
    assert forward[:, 0, 0].all() and forward[:, 0, 1:].sum() == 0
    inverse = observation_mask("inverse", (2, 1, S, S), ["u"], meta, seed=3)
    assert inverse[:, 0, 0].sum() == 0 and inverse[0].sum() == round(500 * S * S / 128**2)
    assert not torch.equal(inverse[0], inverse[1])  # each problem its own sensors
    sensors = observation_mask("reconstruct", (1, 1, S, S), ["u"], meta)
    assert sensors[0, 0].all(0).sum() == 5 and sensors[0, 0, :, 0].all() and sensors[0, 0, :, -1].all()
    assert recovery_mask("inverse", S, ["u"], meta)[0].sum() == S  # the inverse recovers u(x, 0)

    darcy = get_problem("darcy").metadata()
    forward = observation_mask("forward", (1, 2, S, S), ["a", "u"], darcy)
    assert forward[0, 0].all() and forward[0, 1].sum() == 0
    truth = np.stack([np.where(np.arange(S * S).reshape(S, S) % 3 == 0, 12.0, 3.0), np.ones((S, S))])[None]
    estimate = truth.copy()
    estimate[0, 0, 0, :] = 15.0 - truth[0, 0, 0, :]  # one row of a flipped between 3 and 12
    op = ResidualOperator(extract_operator(get_problem("darcy"), S))
    errors = task_errors("inverse", estimate, truth, op, ["a", "u"], darcy)
    assert set(errors) == {"rel_l2_a", "error_rate_a", "error_rate_a_off_interfaces", "error_rate_a_at_interfaces",
                           "residual"}
    assert errors["error_rate_a"][0] == pytest.approx(1 / S)
    with pytest.raises(PiddmError, match="unknown task 'sideways'; choose one of forward, inverse"):
        observation_mask("sideways", (1, 2, S, S), ["a", "u"], darcy)


def test_the_off_interface_error_rate_forgives_a_misplaced_interface_and_nothing_else():
    from piddm_fem.metrics import binary_error_rate, interface_nodes

    rng = np.random.default_rng(0)
    high = rng.random((3, 9, 9)) > 0.5
    near = np.zeros_like(high)  # a neighbour across the threshold, by a loop over the nodes
    for n, j, i in np.ndindex(high.shape):
        for dj, di in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            if 0 <= j + dj < 9 and 0 <= i + di < 9 and high[n, j + dj, i + di] != high[n, j, i]:
                near[n, j, i] = True
    assert np.array_equal(interface_nodes(high), near)

    S = 17
    truth = np.zeros((1, 2, S, S))
    truth[0, 0] = np.where(np.arange(S) < 8, 12.0, 3.0)[None, :]  # a vertical interface: columns 7 and 8
    shifted, blob = truth.copy(), truth.copy()
    shifted[0, 0, :, 8] = 12.0  # the interface one node to the right
    blob[0, 0, 2:5, 12:15] = 12.0  # a wrong region away from it
    for estimate, all_nodes, off in ((shifted, S / S**2, 0.0), (blob, 9 / S**2, 9 / (S**2 - 2 * S))):
        assert binary_error_rate(estimate, truth, 0, 7.5)[0] == pytest.approx(all_nodes)
        assert binary_error_rate(estimate, truth, 0, 7.5, nodes="off_interfaces")[0] == pytest.approx(off)
    rows = np.arange(S)[:, None].repeat(S, 1) < 5  # a region: the interface holds 10 of its 5 S nodes
    assert binary_error_rate(blob, truth, 0, 7.5, rows, nodes="off_interfaces")[0] == pytest.approx(9 / (5 * S - 10))
    assert binary_error_rate(shifted, truth, 0, 7.5, nodes="at_interfaces")[0] == pytest.approx(S / (2 * S))
    assert binary_error_rate(blob, truth, 0, 7.5, nodes="at_interfaces")[0] == 0.0
    checkerboard = np.where(np.indices((S, S)).sum(0) % 2 == 0, 12.0, 3.0)[None, None]
    assert np.isnan(binary_error_rate(checkerboard, checkerboard, 0, 7.5, nodes="off_interfaces")[0])


def test_fd_residual_is_second_order_on_analytic_fields():
    def errors(name, field, exact):
        out = []
        for S in (33, 65):
            X, Y = np.meshgrid(np.linspace(0, 1, S), np.linspace(0, 1, S))
            x = torch.from_numpy(np.stack(field(X, Y)))[None]
            p = get_problem(name)
            r = fd_residual(x, p.fd_residual, p.channels, p.params, p.channels.index(p.unknown))
            out.append(np.abs(r[0, 0, 1:-1, 1:-1].numpy() - exact(X, Y)[1:-1, 1:-1]).max())
        return out

    s, e = np.sin, np.exp
    # Poisson: u = sin(pi x) sin(pi y), f = 0: the residual -lap u = 2 pi^2 u
    poisson = errors("poisson", lambda X, Y: (0 * X, s(np.pi * X) * s(np.pi * Y)),
                     lambda X, Y: 2 * np.pi**2 * s(np.pi * X) * s(np.pi * Y))
    # Burgers: u = sin(pi x) exp(-t): u_t + u u_x - nu u_xx
    nu = get_problem("burgers").params["nu"]
    burgers = errors("burgers", lambda X, Y: (s(np.pi * X) * e(-Y),),
                     lambda X, Y: (-1 + np.pi * np.cos(np.pi * X) * e(-Y) + nu * np.pi**2) * s(np.pi * X) * e(-Y))
    for coarse, fine in (poisson, burgers):
        assert 3.5 < coarse / fine < 4.5, (coarse, fine)


def test_fd_residual_accepts_only_the_declared_language():
    x = torch.zeros(1, 2, 5, 5, dtype=torch.float64)
    for bad in ("__import__('os').system('true')", "u.real", "dx(u + f)", "lap(v)", "g * u"):
        with pytest.raises(PiddmError, match="not a number, a channel"):
            fd_residual(x, bad, ["f", "u"], {"k": 1.0}, 1)
    with pytest.raises(PiddmError, match="declares no finite-difference residual"):
        fd_residual(x, None, ["f", "u"], {}, 1)


@pytest.mark.parametrize("name", problem_names())
def test_every_problem_declares_metadata_the_learning_side_reads(name):
    problem = get_problem(name)
    meta = problem.metadata()
    schema.check_meta(name, meta, problem.channels)
    json.dumps(meta)  # stored as a JSON attribute
    S = 9
    for task in meta["tasks"]:
        mask = observation_mask(task, (1, len(problem.channels), S, S), list(problem.channels), meta)
        assert 0 < mask.sum() < mask.numel()


def test_files_without_metadata_are_read_with_defaults(tmp_path):
    info = schema.DatasetInfo("old", ["k", "u"], 5, 1)
    path = tmp_path / "old.h5"
    schema.write(path, info, np.zeros((1, 2, 5, 5)))
    with h5py.File(path, "a") as f:
        del f.attrs["meta"]
    meta = schema.read_info(path).meta
    assert meta == schema.default_meta("old", ["k", "u"]) and meta["unknown"] == "u"
    assert meta["tasks"]["forward"] == {"observe": {"k": "all"}, "recover": {"u": "all"}}
    with h5py.File(path, "a") as f:
        f.attrs["meta"] = json.dumps({**meta, "thresholds": {"a": 7.5}})
    with pytest.raises(PiddmError, match=r"names channel\(s\) \['a'\].*regenerate"):
        schema.read_info(path)
    with h5py.File(path, "a") as f:
        f.attrs["boundary"] = json.dumps(["dirichlet", "sticky"])
    with pytest.raises(PiddmError, match="is not two of dirichlet, periodic, open"):
        schema.read_info(path)


TOY = '''
"""A toy PDE kept outside the package: -Laplacian w + k w = 1, k in {1, 5}."""
import firedrake as fd
import numpy as np

from piddm_fem.solvers.problem import Problem


class Toy(Problem):
    name = "toy_screened"
    display_name = "toy screened diffusion"
    channels = ("k", "w")
    unknown = "w"
    fd_residual = "-lap(w) + k * w - 1"

    def form(self, fields, v):
        k, w = fields["k"], fields["w"]
        return (fd.inner(fd.grad(w), fd.grad(v)) + k * w * v - v) * fd.dx

    def thresholds(self):
        return {"k": 3.0}

    def sample_coefficients(self, S, rng):
        return {"k": np.where(rng.random((S, S)) < 0.5, 1.0, 5.0)}


PROBLEM_CLASS = Toy
'''


def test_a_toy_problem_in_a_temporary_module_runs_the_whole_pipeline(tmp_path, monkeypatch):
    """Adding a PDE touches no other file: a module with the problem, its name registered, and
    generate -> teacher -> distil -> sample -> compare report run on it."""
    from piddm_fem import solvers
    from piddm_fem.evaluation import compare, load_setup, make_budget
    from piddm_fem.report import write_compare
    from piddm_fem.solvers.generate import generate
    from piddm_fem.student import distill, sample_student
    from piddm_fem.teacher import train_teacher

    (tmp_path / "toy_pde.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(solvers, "_REGISTRY", dict(solvers._REGISTRY))  # registration undone afterwards
    solvers.register_problem("toy_screened", "toy_pde")
    data, teacher, student = tmp_path / "toy.h5", tmp_path / "teacher", tmp_path / "student"
    generate(get_problem("toy_screened"), 30, 9, 0, data, show_progress=False)
    assert schema.read_info(data).meta["thresholds"] == {"k": 3.0}
    train_teacher(data, teacher, steps=2, batch=4, size="tiny", device="cpu", progress=False, val_every=2, warmup=1)
    distill(teacher, data, student, steps=2, device="cpu", progress=False, pairs=4, teacher_steps=2, batch=2,
            val_pairs=2, val_every=1)
    assert sample_student(student, 3, 0)["fields"].shape == (3, 2, 9, 9)
    setup = load_setup(data, teacher, {"PIDDM": student}, make_budget(teacher, quick=True), "cpu", tmp_path / "cmp")
    doc = compare(setup, ["teacher", "PIDDM-1", "fno"], [0])
    md = write_compare(tmp_path / "cmp", doc)["md"].read_text()
    assert "toy screened diffusion S = 9" in md and "SMSE k" in md and "SMSE w" in md
    forward = next(m for m in doc["methods"] if m["method"] == "PIDDM-1")["tasks"]["forward"]
    assert set(forward) == {"rel_l2_w", "residual", "seconds_per_problem"}
    inverse = next(m for m in doc["methods"] if m["method"] == "PIDDM-1")["tasks"]["inverse"]
    assert {"rel_l2_k", "error_rate_k"} <= set(inverse)
    assert "fraction_k_above" in doc["methods"][0]["sample"]
