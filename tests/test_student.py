"""PIDDM distillation, refinement and tasks on a tiny teacher (torch only, plus the fixture data)."""

import functools
import shutil

import h5py
import numpy as np
import pytest
import torch
from conftest import assert_validates

from piddm_fem import pairs as pairs_module
from piddm_fem import checkpoint, fem_solve, schema
from piddm_fem.errors import PiddmError
from piddm_fem.pairs import PairBank
from piddm_fem.student import Distiller, distill, load_student, student_noise
from piddm_fem.tasks import TASK_LAMBDA, infer_masked, observation_mask, optimize_latent, refine
from piddm_fem.teacher import load_teacher


def make_distiller(tiny_teacher, darcy_file, tmp_path, lam):
    return Distiller(tiny_teacher, darcy_file, tmp_path / f"s{lam}",
                     {"lambda_train": lam, "pairs": 4, "teacher_steps": 2}, torch.device("cpu"), False)


def batch(distiller, n=4):
    eps = student_noise(distiller.teacher_ckpt, 5, np.arange(n))
    x0 = torch.randn(eps.shape, generator=torch.Generator().manual_seed(1))
    return eps, x0


def grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def test_lambda_zero_loss_is_plain_regression(tiny_teacher, darcy_file, tmp_path):
    d = make_distiller(tiny_teacher, darcy_file, tmp_path, 0.0)
    eps, x0 = batch(d)
    regression, physics = d.losses(eps, x0)
    loss = (regression + d.lam() * physics).mean()
    plain = torch.nn.functional.mse_loss(d.student(eps), x0)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)
    loss.backward()
    g_loss = grads(d.student).clone()
    d.student.zero_grad()
    torch.nn.functional.mse_loss(d.student(eps), x0).backward()
    assert torch.allclose(g_loss, grads(d.student), rtol=1e-5, atol=1e-8)
    d.bank.close()


def test_the_penalty_steers_the_training_step(tiny_teacher, darcy_file, tmp_path):
    """`Distiller.run` descends regression + lambda x residual: from the same start, pairs and
    batch, one small Adam step with a large lambda lowers the residual of the one-step samples
    below where the same step at lambda = 0 leaves it (a dropped or sign-flipped penalty fails)."""
    after = {}
    for lam in (0.0, 1e4):
        d = Distiller(tiny_teacher, darcy_file, tmp_path / f"r{lam}",
                      {"lambda_train": lam, "pairs": 4, "teacher_steps": 2, "batch": 4, "val_pairs": 2,
                       "lr": 1e-5, "refresh": 0, "ema_decay": 0.0}, torch.device("cpu"), False)
        eps, _ = batch(d)
        with torch.no_grad():
            before = d.losses(eps, torch.zeros_like(eps))[1].mean().item()
        d.run(1, progress=False)
        with torch.no_grad():
            after[lam] = d.losses(eps, torch.zeros_like(eps))[1].mean().item()
    assert after[1e4] < before and after[1e4] < after[0.0]


def test_residual_term_gradient_reaches_the_student(tiny_teacher, darcy_file, tmp_path):
    d = make_distiller(tiny_teacher, darcy_file, tmp_path, 1.0)
    eps, _ = batch(d)
    _, physics = d.losses(eps, torch.zeros_like(eps))
    physics.mean().backward()
    g = grads(d.student)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    # and it is the residual of the de-normalised one-step sample
    with torch.no_grad():
        x = d.normalizer.denormalize(d.student(eps))
        assert torch.allclose(physics.detach(), d.operator.loss(x))
    d.bank.close()


def test_distilled_student_checkpoint_records_teacher_and_samples(tiny_student, tiny_teacher):
    student, ckpt, normalizer, operator = load_student(tiny_student)
    assert ckpt["kind"] == "student" and ckpt["step"] == 4
    assert ckpt["teacher"]["step"] == load_teacher(tiny_teacher)[1]["step"]
    assert ckpt["pair_seconds"] > 0
    eps = student_noise(ckpt, 0, np.arange(3))
    with torch.no_grad():
        x = normalizer.denormalize(student(eps))
    assert x.shape == (3, 2, 17, 17) and torch.isfinite(x).all()
    with h5py.File(tiny_student / "pairs.h5") as f:  # the bank was refreshed with fresh noise
        assert f["noise_index"][:].max() >= 8 and f["done"][:].all()


def test_refinement_lowers_the_residual(tiny_student):
    student, ckpt, normalizer, operator = load_student(tiny_student)
    eps = student_noise(ckpt, 1, np.arange(4))
    with torch.no_grad():
        before = operator.relative(normalizer.denormalize(student(eps)).double())
    after = refine(student, normalizer, operator, eps, steps=30, lambda_infer=1.0, lr=0.05)
    assert after["relative_residual"].median() < 0.9 * before.median()


def test_task_optimisation_lowers_the_masked_misfit(tiny_student, darcy_file):
    student, ckpt, normalizer, operator = load_student(tiny_student)
    _, truth, _ = schema.read(darcy_file, [0, 1])
    truth = torch.from_numpy(truth).float()
    mask = observation_mask("inverse", truth.shape, ckpt["channels"], checkpoint.meta(ckpt), points=30)
    assert mask[:, 1].sum() == 60 and mask[:, 0].sum() == 0
    eps = student_noise(ckpt, 2, np.arange(2))
    start = optimize_latent(student, normalizer, operator, truth, mask, eps, steps=0, lam=0.0)
    end = optimize_latent(student, normalizer, operator, truth, mask, eps, steps=60, lam=0.0, lr=0.1)
    assert end["misfit"].mean() < 0.8 * start["misfit"].mean()
    # observed entries are returned exactly
    assert torch.equal(end["x"][mask.bool()], truth[mask.bool()])


def test_forward_task_dual_penalty_pulls_u_towards_the_solution(tiny_student, darcy_file):
    """Algorithm 3's forward task: with the dual-norm penalty the estimate's u is closer to the FEM
    solution of the observed coefficient than without physics (this barely trained student needs
    10x the default weight: 0.55 against 0.62 relative L2; 0.60 at the default)."""
    student, ckpt, normalizer, operator = load_student(tiny_student)
    _, truth, _ = schema.read(darcy_file, [0, 1])
    mask = observation_mask("forward", truth.shape, ckpt["channels"], checkpoint.meta(ckpt))

    def u_error(**physics):
        u = infer_masked(student, normalizer, operator, truth, mask, steps=60, restarts=2, **physics)["mean"][:, 1]
        return float(np.linalg.norm(u.numpy() - truth[:, 1]) / np.linalg.norm(truth[:, 1]))

    assert u_error(norm="dual", lam=10 * TASK_LAMBDA["dual"]) < 0.95 * u_error(lam=0.0)
    with pytest.raises(PiddmError, match="--physics-norm 'h1'"):
        u_error(norm="h1")


def interrupt_second_pair_batch(monkeypatch):
    """The pair bank's second call of the teacher raises KeyboardInterrupt (Ctrl-C while the bank is
    made); returns the real function."""
    real, calls = pairs_module.teacher_pairs, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs_module, "teacher_pairs", flaky)
    return real


def test_pair_bank_resumes_after_interruption(tiny_teacher, darcy_file, tmp_path, monkeypatch):
    net, ckpt = load_teacher(tiny_teacher)
    real = interrupt_second_pair_batch(monkeypatch)
    bank = PairBank(tmp_path / "p.h5", net, ckpt, 8, 0, 2, batch=4)
    with pytest.raises(KeyboardInterrupt):
        bank.fill(progress=False)
    bank.close()
    monkeypatch.setattr(pairs_module, "teacher_pairs", real)
    bank = PairBank(tmp_path / "p.h5", net, ckpt, 8, 0, 2, batch=4)
    assert bank.file["done"][:].sum() == 4
    bank.fill(progress=False)
    fresh = PairBank(tmp_path / "q.h5", net, ckpt, 8, 0, 2, batch=8)
    fresh.fill(progress=False)
    assert torch.allclose(bank.x0, fresh.x0, atol=1e-5) and torch.equal(bank.eps, fresh.eps)
    bank.close(), fresh.close()
    with pytest.raises(PiddmError, match="another teacher, seed or size"):
        PairBank(tmp_path / "p.h5", net, ckpt, 8, 1, 2)
    with h5py.File(tmp_path / "p.h5", "r+") as f:  # a bank from before the pair stream
        del f.attrs["stream"]
    with pytest.raises(PiddmError, match="another teacher, seed or size"):
        PairBank(tmp_path / "p.h5", net, ckpt, 8, 0, 2)
    # a distillation into a folder that holds another bank refuses and leaves that bank alone
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(tmp_path / "p.h5", run / "pairs.h5")
    with pytest.raises(PiddmError, match="another teacher, seed or size.*delete it"):
        distill(tiny_teacher, darcy_file, run, 1, device="cpu", progress=False, pairs=8, teacher_steps=2)
    with h5py.File(run / "pairs.h5") as f:
        assert f["done"][:].all() and "stream" not in f.attrs
    (run / "pairs.h5").write_bytes(b"not hdf5" * 100)
    with pytest.raises(PiddmError, match="not a readable pair bank.*delete it"):
        PairBank(run / "pairs.h5", net, ckpt, 8, 0, 2)


def test_a_distillation_stopped_in_its_pairs_resumes_and_bad_steps_are_refused(tiny_teacher, darcy_file, tmp_path,
                                                                                  monkeypatch):
    """Ctrl-C while the bank is made leaves no last.pt: --resume then starts the run and the bank
    continues. Steps below the checkpoint's, a --delay that the run never reaches, and an unknown
    --physics-norm are one-line errors, the last before anything is written."""
    settings = dict(device="cpu", progress=False, lambda_train=1e-3, pairs=8, teacher_steps=2, batch=4,
                    val_pairs=4, val_every=2, refresh=0)
    interrupt_second_pair_batch(monkeypatch)
    monkeypatch.setattr(pairs_module.PairBank, "__init__", functools.partialmethod(pairs_module.PairBank.__init__, batch=4))
    with pytest.raises(KeyboardInterrupt):
        distill(tiny_teacher, darcy_file, tmp_path / "s", 2, **settings)
    assert not (tmp_path / "s" / "last.pt").exists()
    with h5py.File(tmp_path / "s" / "pairs.h5") as f:
        assert f["done"][:].sum() == 4
    assert distill(tiny_teacher, darcy_file, tmp_path / "s", 2, resume=True, **settings)["step"] == 2
    with pytest.raises(PiddmError, match="--steps 1 is below the checkpoint's step 2"):
        distill(tiny_teacher, darcy_file, tmp_path / "s", 1, resume=True, **settings)
    with pytest.raises(PiddmError, match="nothing to resume"):
        distill(tiny_teacher, darcy_file, tmp_path / "new", 2, resume=True, **settings)
    with pytest.raises(PiddmError, match="--delay 2 is not below --steps 2"):
        distill(tiny_teacher, darcy_file, tmp_path / "late", 2, delay_steps=2, **settings)
    with pytest.raises(PiddmError, match="unknown --physics-norm 'h1'"):
        distill(tiny_teacher, darcy_file, tmp_path / "norm", 2, physics_norm="h1", **settings)
    assert not (tmp_path / "late").exists() and not (tmp_path / "norm").exists()


def test_loading_a_network_leaves_the_callers_random_state(tiny_student, tiny_teacher):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_teacher(tiny_teacher)
    load_student(tiny_student)
    assert torch.equal(torch.rand(3), expected)


def test_student_is_never_sampled_from_its_training_noise(tiny_student):
    """The bank's noise (and so the teacher samples it regresses on) is not the noise that
    `piddm sample` and every evaluation draw from, for the same seed and indices."""
    ckpt = checkpoint.load(tiny_student, kind="student")
    with h5py.File(tiny_student / "pairs.h5") as f:
        bank = torch.from_numpy(f["eps"][:]).flatten(1)
        top = int(f["noise_index"][:].max()) + 1
    sampled = student_noise(ckpt, ckpt["config"]["distill"]["seed"], np.arange(top)).flatten(1)
    assert torch.cdist(bank, sampled).min() > 1.0


def test_student_against_another_problem_is_a_clear_error(cli, tiny_student, tmp_path):
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate

    other = tmp_path / "poisson.h5"
    generate(get_problem("poisson"), 1, 17, 0, other, show_progress=False)
    code, _, err = cli("infer", tiny_student, "--task", "forward", "--data", other, "--index", "0",
                       "--out", tmp_path / "r.h5")
    assert code == 2 and "Traceback" not in err
    assert "darcy S=17" in err and "poisson S=17" in err


def test_distillation_resumes_where_it_stopped(tiny_teacher, darcy_file, tmp_path):
    from piddm_fem import checkpoint
    from piddm_fem.student import distill

    settings = dict(device="cpu", progress=False, lambda_train=1e-3, pairs=8, teacher_steps=2, batch=4,
                    val_pairs=4, val_every=2, refresh=0)
    distill(tiny_teacher, darcy_file, tmp_path / "s", 2, **settings)
    with pytest.raises(PiddmError, match="--resume"):
        distill(tiny_teacher, darcy_file, tmp_path / "s", 4, **settings)
    stats = distill(tiny_teacher, darcy_file, tmp_path / "s", 4, resume=True, **settings)
    assert stats["step"] == 4 and checkpoint.load(tmp_path / "s" / "last.pt")["step"] == 4
    # a resume with another learning rate trains at that rate, not at the one in the saved optimizer
    distill(tiny_teacher, darcy_file, tmp_path / "s", 6, resume=True, lr=1e-3, **settings)
    saved = checkpoint.load(tmp_path / "s" / "last.pt")
    assert saved["config"]["distill"]["lr"] == 1e-3
    assert [g["lr"] for g in saved["optimizer"]["param_groups"]] == [1e-3]


def test_a_student_and_its_pairs_belong_to_one_teacher(tiny_teacher, other_teacher, darcy_file, tmp_path):
    """Another teacher of the same data and step count is refused on resume, by the pair bank, and
    by the comparison: each would mix one teacher's pairs or rows with another's."""
    import shutil

    from piddm_fem.evaluation import load_setup
    from piddm_fem.student import PAIRS_FILE, distill

    settings = dict(device="cpu", progress=False, lambda_train=1e-3, pairs=8, teacher_steps=2, batch=4,
                    val_pairs=4, val_every=2, refresh=0)
    distill(tiny_teacher, darcy_file, tmp_path / "s", 2, **settings)
    with pytest.raises(PiddmError, match="another teacher"):
        distill(other_teacher, darcy_file, tmp_path / "s", 4, resume=True, **settings)
    (tmp_path / "t").mkdir()
    shutil.copy(tmp_path / "s" / PAIRS_FILE, tmp_path / "t" / PAIRS_FILE)
    with pytest.raises(PiddmError, match="pairs of another teacher"):
        distill(other_teacher, darcy_file, tmp_path / "t", 2, **settings)
    with pytest.raises(PiddmError, match="distilled from another teacher"):
        load_setup(darcy_file, other_teacher, {"PIDDM": tmp_path / "s"}, device="cpu", min_test=0)


def test_student_ema_is_saved_sampled_and_continued_on_resume(tiny_teacher, darcy_file, tmp_path):
    """With --ema-decay the checkpoint's "ema" is an average of the weights, which sampling loads,
    and a resumed run continues that average rather than restarting it from the weights."""
    from piddm_fem import checkpoint
    from piddm_fem.student import distill, load_student

    settings = dict(device="cpu", progress=False, lambda_train=1e-3, pairs=8, teacher_steps=2, batch=4,
                    val_pairs=4, val_every=1, refresh=0)
    distill(tiny_teacher, darcy_file, tmp_path / "plain", 2, **settings)
    plain = checkpoint.load(tmp_path / "plain" / "last.pt")
    assert all(torch.equal(plain["ema"][k], v) for k, v in plain["model"].items())
    distill(tiny_teacher, darcy_file, tmp_path / "s", 3, ema_decay=0.5, **settings)
    at3 = checkpoint.load(tmp_path / "s" / "last.pt")
    student = load_student(tmp_path / "s")[0]
    names = [k for k, _ in student.net.named_parameters()]
    assert any(not torch.equal(at3["ema"][k], at3["model"][k]) for k in names)
    assert all(torch.equal(v, at3["ema"][k]) for k, v in student.net.state_dict().items())
    distill(tiny_teacher, darcy_file, tmp_path / "s", 4, resume=True, **settings)
    at4 = checkpoint.load(tmp_path / "s" / "last.pt")
    assert at4["config"]["distill"]["ema_decay"] == 0.5
    decay = min(0.5, (1 + 4) / (10 + 4))  # update_ema's warm-up at step 4
    for k in names:
        torch.testing.assert_close(at4["ema"][k], torch.lerp(at3["ema"][k], at4["model"][k], 1 - decay))


def test_sample_and_infer_commands_write_validatable_files(cli, tiny_student, darcy_file, tmp_path):
    code, out, err = cli("sample", tiny_student, "--n", "3", "--refine", "3", "--out", tmp_path / "s.h5",
                         "--device", "cpu")
    assert code == 0, err
    assert "after 3 refinement steps" in out
    info, fields, _ = schema.read(tmp_path / "s.h5")
    assert info.source == "student-refined" and fields.shape == (3, 2, 17, 17)
    code, out, err = cli("infer", tiny_student, "--task", "inverse", "--data", darcy_file, "--index", "0",
                         "--index", "2", "--points", "20", "--steps", "3", "--restarts", "2",
                         "--out", tmp_path / "inv.h5", "--device", "cpu")
    assert code == 0, err
    with h5py.File(tmp_path / "inv.h5") as f:
        assert f["fields"].shape == f["std"].shape == f["truth"].shape == (2, 2, 17, 17)
        assert f["mask"][:, 1].sum() == 40 and "error_rate_a" in f["errors"]
        # the observed u nodes are returned exactly
        m = f["mask"][:].astype(bool)
        assert np.array_equal(f["fields"][:][m], f["truth"][:][m])
    assert_validates(cli, tmp_path / "s.h5")
    assert_validates(cli, tmp_path / "inv.h5")
    info = schema.read_info(tmp_path / "inv.h5")  # the penalty it used: Darcy's natural norm and weight
    assert info.solver_parameters["physics_norm"] == "dual" and info.solver_parameters["lambda"] == TASK_LAMBDA["dual"]


def test_solved_targets_keep_the_teachers_coefficients_with_zero_residual(tiny_teacher, darcy_file, tmp_path,
                                                                          monkeypatch):
    d = Distiller(tiny_teacher, darcy_file, tmp_path / "solved",
                  {"targets": "solved", "pairs": 4, "teacher_steps": 2, "val_pairs": 2, "val_every": 1},
                  torch.device("cpu"), False)
    d.bank.fill(progress=False)
    _, targets = d._resident_bank()
    teacher = d.normalizer.denormalize(d.bank.x0.double())
    solved = d.normalizer.denormalize(targets.double())
    u, coefficients = d.operator.unknown, [c for c in range(teacher.shape[1]) if c != d.operator.unknown]
    assert torch.allclose(solved[:, coefficients], teacher[:, coefficients], rtol=1e-6, atol=1e-6)
    assert (solved[:, u] - teacher[:, u]).abs().max() > 1e-3  # a tiny teacher's u is far from its a's solution
    assert d.operator.relative(solved).max() < 1e-4 < d.operator.relative(teacher).min()  # float32 targets
    monkeypatch.setattr(fem_solve, "CHUNK_BYTES", 24 * 17**3)  # one field per chunk: the same targets
    assert torch.allclose(d.targets(d.bank.x0), targets, rtol=0, atol=1e-6)
    stats = d.run(2, progress=False)
    assert stats["step"] == 2 and np.isfinite(stats["val_regression"])
    assert checkpoint.load(tmp_path / "solved", kind="student")["config"]["distill"]["targets"] == "solved"


def test_solved_targets_need_a_form_linear_in_the_unknown(cli, rd_student, tiny_teacher, darcy_file, tmp_path):
    data, teacher, _ = rd_student
    code, _, err = cli("distill", teacher, "--data", data, "--out", tmp_path / "rd", "--targets", "solved",
                       "--steps", 1, "--pairs", 2, "--teacher-steps", 1, "--device", "cpu")
    assert code != 0 and "nonlinear in the unknown" in err and "--targets teacher" in err
    assert "Traceback" not in err
    code, _, err = cli("distill", tiny_teacher, "--data", darcy_file, "--out", tmp_path / "d",
                       "--targets", "exact", "--steps", 1, "--device", "cpu")
    assert code != 0 and "unknown --targets 'exact'; choose teacher or solved" in err
