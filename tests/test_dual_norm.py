"""Issue 12's distillation options: the dual-norm residual, the lambda schedule, the physics
gradient on the unknown only, and the k-step student."""

import firedrake as fd
import numpy as np
import pytest
import torch

from piddm_fem import checkpoint, schema
from piddm_fem.dual_norm import DSTPoisson, PhysicsPenalty, dual_loss
from piddm_fem.edm import EDMPrecond
from piddm_fem.errors import PiddmError
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers import get_problem
from piddm_fem.solvers.gridmap import GridMap
from piddm_fem.student import PHYSICS_START, Distiller, Student, distill, load_student, student_noise


def test_dst_solve_matches_a_dense_solve_of_the_assembled_stiffness():
    S = 9
    mesh = get_problem("poisson").mesh(S)
    V = fd.FunctionSpace(mesh, "Q", 1)
    u, v = fd.TrialFunction(V), fd.TestFunction(V)
    K = fd.assemble(fd.inner(fd.grad(u), fd.grad(v)) * fd.dx).petscmat.convert("dense").getDenseArray()
    order = np.argsort(GridMap(V, S).index)  # grid node -> DOF
    K = K[np.ix_(order, order)].reshape(S, S, S, S)[1:-1, 1:-1, 1:-1, 1:-1].reshape((S - 2) ** 2, -1)
    r = torch.randn(3, S - 2, S - 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = np.linalg.solve(K, r.reshape(3, -1).T.numpy()).T.reshape(3, S - 2, S - 2)
    assert np.allclose(DSTPoisson(S).solve(r).numpy(), dense, rtol=1e-12, atol=1e-14)


def test_dual_norm_residual_vanishes_on_solver_data_and_not_off_it(darcy_file):
    op = ResidualOperator.from_file(darcy_file)
    _, fields, _ = schema.read(darcy_file)
    x = torch.from_numpy(fields)
    poisson = DSTPoisson(op.resolution)
    noisy = x.clone()
    noisy[:, 1] *= 1.01
    exact, off = dual_loss(op, poisson, x), dual_loss(op, poisson, noisy)
    assert (off > 0).all() and (exact <= 1e-20 * off).all()


def test_dual_norm_gradient_matches_finite_differences(darcy_file):
    op = ResidualOperator.from_file(darcy_file)
    _, fields, _ = schema.read(darcy_file, [0])
    x = torch.from_numpy(fields).clone()
    x[:, 1] += 1e-3 * torch.randn(x[:, 1].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: dual_loss(op, DSTPoisson(op.resolution), y), (x,),
                                    eps=1e-6, atol=1e-8, rtol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "dual"])
def test_relative_penalty_is_zero_on_solver_data_and_free_of_the_fields_scale(tmp_path, darcy_file, norm):
    """The tasks' penalty, relative to a typical load: zero on Poisson solver data; scaling f, u and
    the normalisation together (a linear problem) leaves it unchanged; for Darcy (load f = 1) the
    typical load is every sample's own."""
    from piddm_fem.data import Normalizer
    from piddm_fem.solvers.generate import generate

    path = tmp_path / "poisson9.h5"
    generate(get_problem("poisson"), 2, 9, 0, path, show_progress=False)
    op = ResidualOperator.from_file(path)
    _, fields, _ = schema.read(path)
    x = torch.from_numpy(fields)
    stats = Normalizer(np.array([0.1, 0.0]), np.array([1.0, 0.02]))
    relative = PhysicsPenalty(op, norm, stats)
    noisy = x.clone()
    noisy[:, 1] += 1e-2 * x[:, 1].abs().max() * torch.randn(noisy[:, 1].shape, dtype=torch.float64,
                                                              generator=torch.Generator().manual_seed(1))
    assert (relative(x) <= 1e-20 * relative(noisy)).all()
    scaled = PhysicsPenalty(op, norm, Normalizer(10 * stats.mean, 10 * stats.std))
    assert torch.allclose(scaled(10.0 * noisy), relative(noisy), rtol=1e-10)
    typical = torch.full((1, 2, 9, 9), float(np.hypot(0.1, 1.0)), dtype=torch.float64)
    typical[:, 1] = 0.0
    absolute = PhysicsPenalty(op, norm)
    assert torch.allclose(relative(noisy), absolute(noisy) / absolute(typical), rtol=1e-12)

    darcy = ResidualOperator.from_file(darcy_file)
    _, fields, _ = schema.read(darcy_file)
    d = torch.from_numpy(fields)
    on_darcy = PhysicsPenalty(darcy, norm, Normalizer(np.array([7.5, 0.01]), np.array([4.5, 0.005])))
    plain = PhysicsPenalty(darcy, norm)
    assert torch.allclose(on_darcy(d + 1e-3), plain(d + 1e-3) / plain(darcy.unloaded(d)), rtol=1e-12)


def test_refinement_penalises_each_samples_relative_residual_so_shrinking_does_not_pay(tmp_path):
    """PIDDM-ref's penalty is each sample's squared relative residual: scale-free on Poisson, where
    a stand-in student whose only freedom is its output's scale 1 + eps[0, 0, 0] / 2 (a noisy
    solution times it) keeps that scale through refinement, while the tasks' penalty over a typical
    load shrinks it (on Darcy, whose load is f = 1, the two are the same: the next test)."""
    from piddm_fem.data import Normalizer
    from piddm_fem.solvers.generate import generate
    from piddm_fem.tasks import optimize_latent, refine

    path = tmp_path / "poisson9.h5"
    generate(get_problem("poisson"), 2, 9, 0, path, show_progress=False)
    op = ResidualOperator.from_file(path)
    _, fields, _ = schema.read(path)
    x = torch.from_numpy(fields)
    x[:, 1] += 0.05 * x[:, 1].abs().max() * torch.randn(x[:, 1].shape, dtype=torch.float64,
                                                         generator=torch.Generator().manual_seed(1))
    per_sample = PhysicsPenalty(op, "l2", per_sample=True)
    torch.testing.assert_close(per_sample(x), op.relative(x) ** 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(per_sample(3.0 * x), per_sample(x), rtol=1e-12, atol=0)
    normalizer = Normalizer(np.array([0.0, 0.0]), np.array([0.3, 0.004]))

    class ScaleOnly(torch.nn.Module):
        def forward(self, eps):
            return normalizer.normalize((1 + eps[:, :1, :1, :1] / 2) * x.float())

    eps = torch.randn(2, 2, 9, 9, generator=torch.Generator().manual_seed(3))
    eps[:, 0, 0, 0] = 0.0
    student = ScaleOnly()
    kept = refine(student, normalizer, op, eps, steps=20, lambda_infer=1e-2, prior=0.0)["eps"][:, 0, 0, 0]
    shrunk = optimize_latent(student, normalizer, op, torch.zeros_like(eps), torch.zeros_like(eps), eps, steps=20,
                             lam=1e-2, prior=0.0, norm="l2")["eps"][:, 0, 0, 0]
    assert kept.abs().max() < 0.05 and (shrunk < -0.5).all()


def test_lambda_waits_for_the_delay_then_ramps(tiny_teacher, darcy_file, tmp_path):
    d = Distiller(tiny_teacher, darcy_file, tmp_path / "s", {"lambda_train": 2.0, "delay_steps": 10,
                                                              "ramp_steps": 4, "pairs": 4, "teacher_steps": 2},
                  torch.device("cpu"), False)
    lams = []
    for step in (0, 9, 10, 12, 14, 100):
        d.step = step
        lams.append(d.lam())
    assert lams == [0.0, 0.0, 0.0, 1.0, 2.0, 2.0]
    d.bank.close()


def test_the_student_at_the_delay_is_the_lambda_zero_student(tiny_teacher, darcy_file, tmp_path):
    """physics_start.pt (the demo's lambda = 0 ablation) is what a lambda = 0 run of delay_steps gives."""
    common = dict(device="cpu", progress=False, pairs=4, teacher_steps=2, batch=2, val_pairs=2,
                  val_every=2, refresh=2)
    distill(tiny_teacher, darcy_file, tmp_path / "a", 4, lambda_train=5.0, delay_steps=2, **common)
    distill(tiny_teacher, darcy_file, tmp_path / "b", 2, lambda_train=0.0, **common)
    start = checkpoint.load(tmp_path / "a" / PHYSICS_START, kind="student")
    plain = checkpoint.load(tmp_path / "b" / checkpoint.LAST, kind="student")
    final = checkpoint.load(tmp_path / "a" / checkpoint.LAST, kind="student")
    assert start["step"] == plain["step"] == 2 and final["step"] == 4
    assert start["config"]["distill"]["lambda_train"] == 0.0  # what `piddm compare` lists for the row
    for k, w in plain["model"].items():
        torch.testing.assert_close(start["model"][k], w, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(start["model"][k], w) for k, w in final["model"].items())


@pytest.mark.parametrize("norm", ["l2", "dual"])
def test_physics_on_the_unknown_leaves_the_coefficients_alone(tiny_teacher, darcy_file, tmp_path, norm):
    d = Distiller(tiny_teacher, darcy_file, tmp_path / norm, {"lambda_train": 1.0, "physics_channels": "unknown",
                                                              "physics_norm": norm, "pairs": 4, "teacher_steps": 2},
                  torch.device("cpu"), False)
    eps = student_noise(d.teacher_ckpt, 5, np.arange(2))
    pred = d.student(eps).detach().requires_grad_(True)
    d.student = lambda _: pred  # the loss sees this output: its gradient is the one the network gets
    _, physics = d.losses(eps, torch.zeros_like(eps))
    physics.sum().backward()
    unknown = d.operator.unknown
    assert pred.grad[:, unknown].abs().max() > 0 and pred.grad[:, 1 - unknown].abs().max() == 0
    d.bank.close()
    with pytest.raises(PiddmError, match="unknown --physics-norm 'h1'; choose l2 or dual"):
        Distiller(tiny_teacher, darcy_file, tmp_path / "bad", {"physics_norm": "h1"}, torch.device("cpu"), False)


def test_physics_scale_divides_the_penalty_by_a_typical_load_or_the_samples_own(tiny_teacher, darcy_file, tmp_path):
    """--physics-scale typical: the training penalty of a sample is its physical penalty over that
    of constant fields at each channel's RMS (the teacher's normalisation) with the unknown zeroed,
    built here by hand; lambda_train then weighs the same relative residual on every problem.
    sample: over the sample's own load, its relative residual squared (for Darcy, whose load is
    f = 1, the same as typical)."""
    runs = {scale: Distiller(tiny_teacher, darcy_file, tmp_path / scale, {"physics_scale": scale, "pairs": 4,
                                                                         "teacher_steps": 2},
                             torch.device("cpu"), False) for scale in ("absolute", "typical", "sample")}
    eps = student_noise(runs["absolute"].teacher_ckpt, 5, np.arange(3))
    pred = runs["absolute"].student(eps).detach()
    physics = {}
    for scale, d in runs.items():
        d.student = lambda _: pred
        physics[scale] = d.losses(eps, torch.zeros_like(eps))[1]
        d.bank.close()
    n, op = runs["absolute"].normalizer, runs["absolute"].operator
    rms = np.sqrt(np.asarray(n.mean) ** 2 + np.asarray(n.std) ** 2)
    typical = torch.tensor(rms, dtype=torch.float64).reshape(1, -1, 1, 1).repeat(1, 1, 17, 17)
    typical[:, op.unknown] = 0.0
    load = float(op.loss(typical)[0])
    assert 0.5 < load < 1.5  # Darcy: f = 1, so the typical load's penalty is about 1
    torch.testing.assert_close(physics["typical"], physics["absolute"] / load, rtol=1e-6, atol=0)
    x = n.denormalize(pred).double()
    torch.testing.assert_close(physics["sample"].double(), op.relative(x) ** 2, rtol=1e-4, atol=0)
    torch.testing.assert_close(physics["sample"], physics["typical"], rtol=1e-4, atol=0)
    with pytest.raises(PiddmError, match="unknown --physics-scale 'load'; choose absolute, typical or sample"):
        Distiller(tiny_teacher, darcy_file, tmp_path / "bad", {"physics_scale": "load"}, torch.device("cpu"), False)


def test_k_step_student_integrates_the_ode_of_an_analytic_denoiser():
    """Gaussian data N(0, s^2): D(x; sigma) = s^2 / (s^2 + sigma^2) x, whose probability-flow ODE maps
    sigma_max eps to s sigma_max eps / sqrt(s^2 + sigma_max^2). Euler's error falls like 1/k; k = 1
    is the one-step D(sigma_max eps; sigma_max)."""
    s = 0.5

    class Gaussian(torch.nn.Module):
        def forward(self, x, sigma):
            return s**2 / (s**2 + torch.as_tensor(sigma) ** 2) * x

    eps = torch.randn(4, 1, 3, 3)
    exact = s * 80.0 * eps / (s**2 + 80.0**2) ** 0.5
    errors = [(Student(Gaussian(), k)(eps) - exact).abs().max().item() / exact.abs().max().item()
              for k in (1, 4, 16, 64)]
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 0.06
    assert 3.5 < errors[2] / errors[3] < 4.5  # first order

    class Raw(torch.nn.Module):  # any raw network F(x, c_noise)
        def forward(self, x, c_noise):
            return torch.tanh(x) * c_noise.reshape(-1, 1, 1, 1)

    net = EDMPrecond(Raw())
    assert torch.equal(Student(net, 1)(eps), net(80.0 * eps, 80.0))


def test_k_step_student_distils_and_loads_with_its_steps(tiny_teacher, darcy_file, tmp_path):
    out = tmp_path / "k2"
    distill(tiny_teacher, darcy_file, out, steps=2, device="cpu", progress=False, k_steps=2,
            physics_norm="dual", pairs=4, teacher_steps=2, batch=2, val_pairs=2, val_every=1)
    student, ckpt, normalizer, operator = load_student(out)
    assert student.steps == 2 and ckpt["config"]["distill"]["k_steps"] == 2
    calls = []
    student.net.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        student(student_noise(ckpt, 0, [0]))
    saved = checkpoint.load(out, kind="student")
    assert len(calls) == 2 and saved["config"]["distill"]["physics_norm"] == "dual"
    assert [h["step"] for h in saved["history"]] == [1, 2]  # the learning curve, one row per validation
    assert all(h["val_relative_residual"] > 0 for h in saved["history"])
