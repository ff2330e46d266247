"""The exported weak-form operator equals Firedrake's assemble(F), in value and gradient."""

import os
import subprocess
import sys

import firedrake as fd
import numpy as np
import pytest
import torch

from piddm_fem import residual as residual_module
from piddm_fem import schema
from piddm_fem.errors import PiddmError
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers import get_problem, problem_names
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator
from piddm_fem.solvers.problem import Problem


def random_fields(problem, S, seed=0):
    """Random fields in every channel (not zeros, not solutions), boundary included."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((3, len(problem.channels), S, S))
    if "a" in problem.channels:
        x[:, problem.channels.index("a")] = 3 + 9 * rng.random((3, S, S))
    return x


def assembled(disc, fields):
    return np.stack([disc.raw_residual(f).reshape(disc.S, disc.S) for f in fields])[:, None]


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("reorder", [True, False])
@pytest.mark.parametrize("name", problem_names())
def test_operator_equals_assemble(name, reorder):
    S = 13
    problem = get_problem(name)
    disc = DiscreteProblem(problem, S, reorder=reorder)
    exported = extract_operator(problem, S, reorder=reorder)
    assert all(np.abs(tensor).max() > 0 for _, tensor in exported["terms"])  # zero terms are dropped
    op = ResidualOperator(exported)
    assert exported["structured"] and op.uses_stencil  # the default path on the structured grid
    x = random_fields(problem, S)
    ref = assembled(disc, x)
    assert rel_err(op.raw(torch.from_numpy(x)).numpy(), ref) <= 1e-10
    assert rel_err(op.raw(torch.from_numpy(x).float()).double().numpy(), ref) <= 1e-5
    scaled = np.stack([disc.scaled_residual(f) for f in x]).reshape(ref.shape)
    assert rel_err(op.scaled(torch.from_numpy(x)).numpy(), scaled) <= 1e-10
    rel = op.relative(torch.from_numpy(x)).numpy()
    assert np.allclose(rel, [disc.relative_residual(f) for f in x], rtol=1e-10)


@pytest.mark.parametrize("name", problem_names())
def test_stencil_path_equals_general_path(name, monkeypatch):
    """Shifted slices (structured grid) and gather/einsum/index_add agree to round-off, in value,
    scaled, and in the gradient of the loss; also on a batch split into several chunks."""
    S = 12
    monkeypatch.setattr(residual_module, "_CHUNK_NODES", 7 * S * S + 5)  # chunks of 7 fields
    problem = get_problem(name)
    exported = extract_operator(problem, S)
    fast, general = ResidualOperator(exported), ResidualOperator(exported, stencil=False)
    assert fast.uses_stencil and not general.uses_stencil
    x = torch.from_numpy(np.concatenate([random_fields(problem, S, seed) for seed in range(200)]))
    assert x.shape[0] * S * S > 20 * residual_module._CHUNK_NODES  # many chunks, the last one short
    for method in ("raw", "scaled"):
        assert rel_err(getattr(fast, method)(x).numpy(), getattr(general, method)(x).numpy()) <= 1e-13
    assert torch.equal(fast.raw(x)[:, 0][:, fast.bc_mask.reshape(S, S)],
                       general.raw(x)[:, 0][:, general.bc_mask.reshape(S, S)])
    grads = []
    for op in (fast, general):
        y = x[:4].clone().requires_grad_()
        op.loss(y).sum().backward()
        grads.append(y.grad.numpy())
    assert rel_err(*grads) <= 1e-12
    assert rel_err(fast.raw(x.float()).double().numpy(), general.raw(x).numpy()) <= 1e-5


class VaryingForm(Problem):
    """A coefficient that depends on x: element tensors differ from cell to cell."""

    name = "varying"
    channels = ("f", "u")

    def form(self, fields, v):
        f, u = fields["f"], fields["u"]
        X = fd.SpatialCoordinate(v.ufl_function_space().mesh())
        return ((1 + X[0]) * fd.inner(fd.grad(u), fd.grad(v)) - f * v) * fd.dx


def test_cell_dependent_tensors_and_older_files_take_the_general_path(tmp_path):
    S = 9
    problem = VaryingForm()
    exported = extract_operator(problem, S)
    op = ResidualOperator(exported)
    assert exported["structured"] and not op.uses_stencil
    x = random_fields(problem, S, seed=2)
    assert rel_err(op.raw(torch.from_numpy(x)).numpy(), assembled(DiscreteProblem(problem, S), x)) <= 1e-10

    darcy = extract_operator(get_problem("darcy"), S)
    path = tmp_path / "op.h5"
    schema.write_operator(path, darcy)
    assert ResidualOperator.from_file(path).uses_stencil
    import h5py

    with h5py.File(path, "a") as f:  # an operator written before the flag existed
        del f["operator"].attrs["structured"]
    older = ResidualOperator.from_file(path)
    assert not older.uses_stencil
    x = torch.from_numpy(random_fields(get_problem("darcy"), S))
    assert rel_err(older.raw(x).numpy(), ResidualOperator(darcy).raw(x).numpy()) <= 1e-13
    with pytest.raises(PiddmError, match="marked structured.*re-export"):
        ResidualOperator({**darcy, "connectivity": darcy["connectivity"][::-1].copy()})


class CubicTestForm(Problem):
    """Degree-3 polynomial test form: (1 + u^2) grad u . grad v + a u u_x v - a v."""

    name = "cubic"
    channels = ("a", "u")

    def form(self, fields, v):
        a, u = fields["a"], fields["u"]
        return ((1 + u * u) * fd.inner(fd.grad(u), fd.grad(v)) + a * u * u.dx(0) * v - a * v) * fd.dx


def test_degree_three_polynomial_form_equals_assemble():
    S = 11
    problem = CubicTestForm()
    op = extract_operator(problem, S)
    assert max(len(combo) for combo, _ in op["terms"]) == 3
    operator = ResidualOperator(op)
    disc = DiscreteProblem(problem, S)
    x = random_fields(problem, S, seed=1)
    ref = assembled(disc, x)
    assert rel_err(operator.raw(torch.from_numpy(x)).numpy(), ref) <= 1e-10
    assert rel_err(operator.raw(torch.from_numpy(x).float()).double().numpy(), ref) <= 1e-5


class ExpForm(Problem):
    name = "exp"
    channels = ("a", "u")

    def form(self, fields, v):
        a, u = fields["a"], fields["u"]
        return (a * fd.inner(fd.grad(u), fd.grad(v)) + fd.exp(u) * v) * fd.dx


def test_unsupported_term_is_named():
    with pytest.raises(PiddmError, match=r"unsupported term.*exp"):
        extract_operator(ExpForm(), 5)


def test_gradient_matches_finite_differences():
    problem = get_problem("darcy")
    op = ResidualOperator(extract_operator(problem, 6))
    x = torch.from_numpy(random_fields(problem, 6)[:1]).requires_grad_()
    assert torch.autograd.gradcheck(lambda y: op.loss(y), (x,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradient_matches_pyadjoint_through_fem_operator():
    """d||R||^2/d(a, u) from torch equals Firedrake's adjoint gradient of the same functional.

    On the grid, ||R||^2 = sum_interior (r_i/m_i)^2 + sum_boundary (u_i - g_i)^2. Its gradient at x
    is that of the linear functional <F(x), w> with w = 2 r/m^2 frozen at x (interior rows), plus
    2 (u - g) on the boundary; pyadjoint differentiates <F(x), w> = assemble(F[v := w])."""
    from firedrake.adjoint import Control, ReducedFunctional, continue_annotation, pause_annotation
    from firedrake.ml.pytorch import fem_operator, to_torch

    S = 9
    problem = get_problem("darcy")
    disc = DiscreteProblem(problem, S)
    op = ResidualOperator(extract_operator(problem, S))
    x = random_fields(problem, S, seed=4)[0]
    xt = torch.from_numpy(x[None]).requires_grad_()
    (op.loss(xt).sum() * S * S).backward()  # loss is the mean square; undo the mean
    grad_torch = xt.grad[0].numpy()

    raw = disc.raw_residual(x)
    weights = np.where(disc.bc_mask, 0.0, 2 * raw / disc.lumped_mass**2)
    w = disc.gridmap.from_grid(weights)
    continue_annotation()
    try:
        a = disc.gridmap.from_grid(x[0])
        u = disc.gridmap.from_grid(x[1])
        J = fd.assemble(fd.replace(problem.form({"a": a, "u": u}, disc.v), {disc.v: w}))
        rf = ReducedFunctional(J, [Control(a), Control(u)])
    finally:
        pause_annotation()
    G = fem_operator(rf)
    a_t = to_torch(a).requires_grad_()
    u_t = to_torch(u).requires_grad_()
    G(a_t, u_t).backward()
    grad_a = np.empty(S * S)
    grad_a[disc.gridmap.index] = a_t.grad.numpy()
    grad_u = np.empty(S * S)
    grad_u[disc.gridmap.index] = u_t.grad.numpy()
    grad_u += np.where(disc.bc_mask, 2 * (x[1].ravel() - disc.g_grid), 0.0)
    # boundary rows of F do not enter ||R||^2: their test functions carry zero weight in w
    assert np.allclose(grad_a, grad_torch[0].ravel(), rtol=1e-9, atol=1e-9 * np.abs(grad_torch).max())
    assert np.allclose(grad_u, grad_torch[1].ravel(), rtol=1e-9, atol=1e-9 * np.abs(grad_torch).max())


def test_ground_truth_is_at_solver_tolerance_and_noise_is_not(darcy_file):
    op = ResidualOperator.from_file(darcy_file)
    _, fields, _ = schema.read(darcy_file)
    x = torch.from_numpy(fields)
    clean = op.relative(x)
    noisy = x.clone()
    noisy[:, 1] *= 1 + 0.01 * torch.randn(noisy[:, 1].shape, generator=torch.Generator().manual_seed(0),
                                         dtype=torch.float64)
    assert clean.max() <= 1e-10
    assert op.relative(noisy).min() >= 1e4 * clean.max()


def test_wrong_shape_is_a_clear_error(darcy_file):
    op = ResidualOperator.from_file(darcy_file)
    with pytest.raises(PiddmError, match=r"expects \[B, 2, 17, 17\]"):
        op.raw(torch.zeros(1, 2, 16, 16))


BLOCK_FIREDRAKE = """
import builtins, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name.split('.')[0] in ('firedrake', 'ufl', 'petsc4py', 'pyop2', 'tsfc'):
        raise ImportError('blocked: ' + name)
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
"""


def run_without_firedrake(code: str):
    return subprocess.run([sys.executable, "-c", BLOCK_FIREDRAKE + code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": ""})


def test_loader_and_learning_side_work_when_firedrake_cannot_be_imported(darcy_file):
    proc = run_without_firedrake(f"""
import torch
from piddm_fem import schema
from piddm_fem.residual import ResidualOperator
import piddm_fem.teacher, piddm_fem.student, piddm_fem.tasks, piddm_fem.pairs, piddm_fem.metrics
op = ResidualOperator.from_file({str(darcy_file)!r})
_, fields, _ = schema.read({str(darcy_file)!r})
r = op.relative(torch.from_numpy(fields))
assert 'firedrake' not in sys.modules
print(float(r.max()))
""")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert float(proc.stdout.strip().splitlines()[-1]) <= 1e-10


def test_firedrake_commands_say_firedrake_is_missing(darcy_file):
    proc = run_without_firedrake(f"""
from piddm_fem.cli.main import run
sys.argv = ['piddm', 'validate', {str(darcy_file)!r}]
run()
""")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "needs Firedrake" in proc.stderr and "Traceback" not in proc.stderr
