"""Every baseline of piddm_fem.baselines on a case with a known answer, the FD residual, and
`piddm compare` (smoke run, bad input)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error


class GaussianDenoiser(torch.nn.Module):
    """Exact E[x0 | x0 + sigma n] for x0 ~ N(mu, s^2) per entry: (s^2 x + sigma^2 mu) / (s^2 + sigma^2)."""

    def __init__(self, mu=0.0, s=1.0):
        super().__init__()
        self.mu, self.s2 = mu, s * s

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        return (self.s2 * x + sigma**2 * self.mu) / (self.s2 + sigma**2)


def _noise(n, shape=(2, 8, 8)):
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_guidance_moves_the_analytic_posterior_toward_the_observation():
    from piddm_fem.baselines.guidance import guided_heun

    net, eps = GaussianDenoiser(), _noise(64)
    mask = torch.zeros_like(eps[:1])
    mask[:, 0, 2:6, 2:6] = 1.0
    target = torch.full_like(eps[:1], 2.0)

    def obs(d):
        return ((d - target) * mask).flatten(1).norm(dim=1)

    free = guided_heun(net, eps, 30)
    guided = guided_heun(net, eps, 30, obs_loss=obs, zeta_obs=0.5)
    observed, other = mask.expand_as(eps) > 0, mask.expand_as(eps) == 0
    # unguided: the prior mean 0; guided: the observed entries well on the way to 2, the others untouched
    assert abs(float(free[observed].mean())) < 0.3
    assert abs(float(guided[observed].mean()) - 2.0) < 0.4 * abs(float(free[observed].mean()) - 2.0)
    assert torch.allclose(guided[other], free[other], atol=1e-12)


class Identity(torch.nn.Module):
    def forward(self, x, sigma):
        return x


@pytest.mark.firedrake
def test_diffusionpde_weights_move_the_physical_fields_as_its_own_update_does():
    """One guided step on an identity denoiser, with each channel observed at some nodes: the
    step in physical units equals DiffusionPDE's own update on its fields x = s field + offset
    (configs/darcy-*.yaml, merge_data.py), channel by channel."""
    from piddm_fem.baselines.guidance import guided_heun, observation_weights
    from piddm_fem.data import Normalizer
    from piddm_fem.edm import sigma_steps
    from piddm_fem.evaluation import Budget
    from piddm_fem.solvers import get_problem

    meta = get_problem("darcy").metadata()
    normalizer = Normalizer(np.array([7.5, 5e-3]), np.array([4.5, 3.7e-3]))
    weights = observation_weights(Budget(guidance_steps=50), meta, normalizer, ["a", "u"])
    g = torch.Generator().manual_seed(1)
    phys = torch.stack([7.5 + 4.5 * torch.randn(2, 6, 6, generator=g, dtype=torch.float64),
                        5e-3 + 4e-3 * torch.randn(2, 6, 6, generator=g, dtype=torch.float64)], dim=1)
    truth = phys + torch.randn(phys.shape, generator=g, dtype=torch.float64) * torch.tensor([1.0, 1e-3]).view(1, 2, 1, 1)
    mask = (torch.rand(phys.shape, generator=g) < 0.3).double()

    target, x0 = normalizer.normalize(truth), normalizer.normalize(phys)
    t_max = float(sigma_steps(1)[0])
    ours = guided_heun(Identity(), x0 / t_max, 1, obs_loss=lambda d: ((d - target) * mask).flatten(2).norm(dim=2),
                       zeta_obs=torch.as_tensor(weights))
    step_ours = normalizer.denormalize(ours) - phys

    step_theirs = []
    for c, (zeta, s) in enumerate([(5.0, 0.2), (5000.0, 115.0)]):  # their loss and update, their units
        x = (s * phys[:, c] + 0.3).requires_grad_(True)
        loss = zeta * (((x - 0.3) / s - truth[:, c]) * mask[:, c]).flatten(1).norm(dim=1).sum()
        step_theirs.append(-torch.autograd.grad(loss, x)[0] / s)
    step_theirs = torch.stack(step_theirs, dim=1)
    assert float(step_theirs.abs().max()) > 0
    assert torch.allclose(step_ours, step_theirs, rtol=1e-9, atol=1e-15)
    # where no weight is published, the rule 5 sqrt(2000 / N) for every channel
    assert np.allclose(observation_weights(Budget(guidance_steps=50), {}, normalizer, ["a", "u"]), 5 * 40**0.5)


def test_pde_guidance_alone_lowers_the_loss_it_guides_on():
    from piddm_fem.baselines.guidance import guided_heun

    net, eps = GaussianDenoiser(), _noise(32)

    def pde(d):  # a "residual" that wants channel 1 equal to channel 0
        return (d[:, 1] - d[:, 0]).flatten(1).norm(dim=1)

    free = guided_heun(net, eps, 20)
    guided = guided_heun(net, eps, 20, pde_loss=pde, zeta_pde=0.5, pde_from=0.0)
    assert float(pde(guided).mean()) < 0.5 * float(pde(free).mean())


class TiedChannelsDenoiser(torch.nn.Module):
    """Exact E[x0 | x0 + sigma n] for x0 = (z, z), z ~ N(0, 1) per pixel: both channels
    (x_0 + x_1) / (2 + sigma^2). A prior that ties an unobserved channel to an observed one."""

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1)
        m = (x[:, :1] + x[:, 1:]) / (2 + sigma**2)
        return torch.cat([m, m], dim=1)


@pytest.mark.parametrize("mix,resample_every", [(1, 0), (5, 1), (3, 2)])
def test_eci_reproduces_the_observed_entries_exactly(mix, resample_every):
    from piddm_fem.baselines.eci import eci_sample
    from piddm_fem.edm import RESAMPLE_STREAM, RowNoise

    net, eps = GaussianDenoiser(mu=0.5), _noise(8)
    mask = (torch.rand(eps.shape, generator=torch.Generator().manual_seed(1)) < 0.2).double()
    target = torch.randn(eps.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = eci_sample(net, eps, 10, target, mask, mix=mix, resample_every=resample_every,
                   fresh=RowNoise(0, range(8), RESAMPLE_STREAM))
    assert torch.equal(x[mask > 0], target[mask > 0])
    assert (x[mask == 0] - target[mask == 0]).abs().mean() > 0.3


def test_eci_carries_the_observations_to_what_the_prior_ties_them_to():
    """Channel 0 observed, channel 1 free but equal to channel 0 under the prior: ECI's rounds of
    correction and re-noising must bring channel 1 to the observations (the prior's spread is 1)."""
    from piddm_fem.baselines.eci import eci_sample
    from piddm_fem.edm import RESAMPLE_STREAM, RowNoise

    eps = _noise(16)
    mask = torch.zeros_like(eps)
    mask[:, 0] = 1.0
    target = torch.randn(eps.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = eci_sample(TiedChannelsDenoiser(), eps, 18, target, mask, fresh=RowNoise(0, range(16), RESAMPLE_STREAM))
    assert float((x[:, 1] - target[:, 0]).abs().mean()) < 0.05


def test_eci_evaluates_steps_times_mix_and_each_problem_sees_its_own_noise():
    from piddm_fem.baselines.eci import eci_sample
    from piddm_fem.edm import RESAMPLE_STREAM, RowNoise, noise_for_indices

    calls = []

    class Counting(GaussianDenoiser):
        def forward(self, x, sigma):
            calls.append(len(x))
            return super().forward(x, sigma)

    shape = (2, 8, 8)
    eps = noise_for_indices(0, range(4), shape, dtype=torch.float64)
    mask = (torch.rand((4, *shape), generator=torch.Generator().manual_seed(1)) < 0.2).double()
    target = torch.randn((4, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    batch = eci_sample(Counting(), eps, 6, target, mask, mix=3, fresh=RowNoise(0, range(4), RESAMPLE_STREAM))
    assert calls == [4] * 18
    alone = eci_sample(Counting(), eps[2:3], 6, target[2:3], mask[2:3], mix=3,
                       fresh=RowNoise(0, [2], RESAMPLE_STREAM))
    torch.testing.assert_close(alone[0], batch[2], rtol=0, atol=1e-14)


def test_fd_residual_of_a_smooth_poisson_solution_is_second_order():
    from piddm_fem.evaluation import fd_rms

    from piddm_fem import schema

    meta = {**schema.default_meta("poisson", ["f", "u"]), "fd_residual": "-lap(u) - f"}  # Poisson's declaration
    info = SimpleNamespace(problem="poisson", params={}, channels=["f", "u"], meta=meta)
    errors = []
    for S in (17, 33):
        y, x = np.meshgrid(np.linspace(0, 1, S), np.linspace(0, 1, S), indexing="ij")
        u = np.sin(np.pi * x) * np.sin(np.pi * y)
        errors.append(fd_rms(info, np.stack([2 * np.pi**2 * u, u])[None])[0])
    assert errors[1] < errors[0] / 3.5 and errors[0] < 0.5  # O(h^2): 4x smaller at half h
    undeclared = SimpleNamespace(problem="toy", params={}, channels=["f", "u"], meta={**meta, "fd_residual": None})
    assert fd_rms(undeclared, np.zeros((1, 2, 5, 5))) is None


@pytest.mark.firedrake
@pytest.mark.parametrize("norm", ["l2", "dual"])
def test_direct_optimisation_lowers_misfit_plus_residual_on_a_real_operator(darcy_file, norm):
    from piddm_fem import schema
    from piddm_fem.baselines.direct import optimize_fields
    from piddm_fem.data import compute_normalizer
    from piddm_fem.dual_norm import PhysicsPenalty
    from piddm_fem.residual import ResidualOperator
    from piddm_fem.tasks import TASK_LAMBDA

    op = ResidualOperator.from_file(darcy_file)
    _, truth, _ = schema.read(darcy_file, [0, 1])
    normalizer = compute_normalizer(darcy_file, np.arange(6))
    target = normalizer.normalize(torch.from_numpy(truth))
    mask = torch.zeros_like(target)
    mask[:, 0] = 1.0  # the forward task: a observed

    penalty, lam = PhysicsPenalty(op, norm, normalizer), TASK_LAMBDA[norm]

    def objective(z):
        misfit = ((z - target) * mask).square().flatten(1).sum(1) / mask.flatten(1).sum(1)
        return misfit + lam * penalty(normalizer.denormalize(z))

    start = torch.zeros_like(target)
    z = optimize_fields(start, normalizer, penalty, target, mask, steps=60, lam=lam)
    assert torch.all(objective(z) < 0.2 * objective(start))
    assert torch.equal(start, torch.zeros_like(target))  # the caller's tensor is left alone


def test_fno_fits_a_linear_map():
    from piddm_fem.baselines.fno import FNO2d, train_fno

    torch.manual_seed(0)
    k = torch.arange(16, dtype=torch.float32)
    x = sum(torch.randn(64, 1, 1, 1) * torch.sin(np.pi * f * k / 15)[None, None, :, None]
            * torch.cos(np.pi * g * k / 15)[None, None, None, :] for f, g in ((1, 1), (2, 1), (1, 3)))
    y = 2 * x + 1
    model = FNO2d(1, 1, modes=4, width=16)
    train_fno(model, x, y, seconds=float("inf"), lr=3e-3, max_steps=300)
    with torch.no_grad():
        rel = ((model(x) - y).norm() / y.norm()).item()
    assert rel < 0.1


def test_pidm_weighs_the_residual_by_its_ddpm_posterior_variance():
    """The variance at the noise levels of PIDM's 100 steps is its code's posterior_variance_clipped
    (make_beta_schedule("cosine"), written here as there); between them it is monotone."""
    from piddm_fem.baselines.pidm import pidm_variance

    n, s = 100, 0.008
    x = torch.linspace(0, n, n + 1, dtype=torch.float64)
    alphas_cumprod = torch.cos(((x / n) + s) / (1 + s) * torch.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = torch.clip(1 - (alphas_cumprod[1:] / alphas_cumprod[:-1]), 0, 0.999)
    alphas_prod = torch.cumprod(1.0 - betas, 0)
    prev = torch.nn.functional.pad(alphas_prod[:-1], (1, 0), value=1.0)
    variance = betas * (1.0 - prev) / (1.0 - alphas_prod)
    variance[0] = variance[1]
    sigma = (1 / alphas_prod - 1).sqrt()
    assert torch.allclose(pidm_variance(sigma), variance, rtol=1e-10)
    between = pidm_variance(torch.logspace(-3, 3, 200, dtype=torch.float64))
    assert (between.diff() >= 0).all() and float(between[0]) == pytest.approx(float(variance[0]))
    # the weight c / (6 Sigma) at the lowest and highest of their levels: 0.41 and 1.7e-4 for c = 1e-3
    assert 1e-3 / (6 * float(variance[0])) == pytest.approx(0.413, rel=1e-2)
    assert 1e-3 / (6 * float(variance[-1])) == pytest.approx(1.67e-4, rel=1e-2)


@pytest.mark.firedrake
def test_pidm_finetuning_lowers_the_residual_of_the_posterior_mean(darcy_file, tiny_teacher, other_teacher, tmp_path):
    from piddm_fem import checkpoint
    from piddm_fem.baselines.pidm import PIDMLoss, finetune
    from piddm_fem.evaluation import Budget, load_setup
    from piddm_fem.data import FieldDataset
    from piddm_fem.teacher import load_teacher

    setup = load_setup(darcy_file, tiny_teacher, budget=Budget(), device="cpu", min_test=0)
    x = torch.stack([FieldDataset(darcy_file, np.arange(6), setup.normalizer)[k] for k in range(6)])
    loss = PIDMLoss(setup.operator, setup.normalizer, 1.0)

    def physics(net):
        outputs = []
        loss.edm(lambda z, s: outputs.append(net(z, s)) or outputs[-1], x, torch.Generator().manual_seed(3))
        return float(setup.operator.loss(setup.normalizer.denormalize(outputs[0].double())).mean())

    before = physics(setup.teacher)
    cost = finetune(setup, tmp_path / "pidm", steps=30, lam=10.0, lr=1e-3, ema_decay=0.0)
    after = physics(load_teacher(tmp_path / "pidm" / "last.pt")[0])
    assert after < 0.5 * before
    # a finished fine-tuning is reused, and reports the time it took, not the time of the reuse
    again = finetune(setup, tmp_path / "pidm", steps=30, lam=10.0, lr=1e-3, ema_decay=0.0)
    assert cost["seconds"] > 0.1 and again["seconds"] == cost["seconds"]
    # another teacher of the same data does not resume that fine-tuning: it starts from its own weights
    other = load_setup(darcy_file, other_teacher, budget=Budget(), device="cpu", min_test=0)
    finetune(other, tmp_path / "pidm", steps=3, lam=10.0, lr=1e-3, ema_decay=0.0)
    assert checkpoint.load(tmp_path / "pidm" / "last.pt")["step"] == other.teacher_ckpt["step"] + 3


@pytest.fixture(scope="module")
def darcy20(tmp_path_factory):
    """20 Darcy samples at S = 17 (a test split of 2), a tiny teacher and both students, and
    another teacher of the same data."""
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.generate import generate
    from piddm_fem.student import distill, share_pair_bank
    from piddm_fem.teacher import train_teacher

    root = tmp_path_factory.mktemp("darcy20")
    data = root / "data.h5"
    generate(get_problem("darcy"), 20, 17, 5, data, show_progress=False)
    train_teacher(data, root / "teacher", steps=4, batch=4, size="tiny", device="cpu", progress=False,
                  val_every=2, val_samples=2, warmup=1)
    bank = {"pairs": 8, "teacher_steps": 2}
    for name, lam in (("student", 1e-3), ("ablation", 0.0)):
        shared = share_pair_bank(root / "student", root / name, **bank)
        assert shared == (name == "ablation")  # the second run takes the first one's bank
        distill(root / "teacher", data, root / name, steps=3, device="cpu", progress=False, lambda_train=lam,
                batch=4, val_pairs=4, val_every=3, refresh=0, **bank)
    assert not share_pair_bank(root / "student", root / "other", pairs=16, teacher_steps=2)  # another size
    train_teacher(data, root / "other_teacher", steps=2, batch=4, size="tiny", device="cpu", progress=False,
                  val_every=2, val_samples=2, warmup=1, seed=1)
    return root


@pytest.mark.firedrake
def test_compare_quick_writes_every_method_row_over_seeds(cli, darcy20, tmp_path):
    from piddm_fem.baselines import METHODS

    out = tmp_path / "cmp"
    code, stdout, err = cli("compare", darcy20 / "data.h5", "--teacher", darcy20 / "teacher", "--student",
                            darcy20 / "student", "--ablation", darcy20 / "ablation", "--seeds", 0, 1,
                            "--out", out, "--quick", "--device", "cpu")
    assert code == 0, err
    doc = json.loads((out / "compare.json").read_text())
    rows = {m["method"]: m for m in doc["methods"]}
    assert set(rows) == set(METHODS)
    assert rows["teacher"]["sample"]["residual"]["n"] == 2  # mean and std over the two seeds
    assert set(rows["fno"]["tasks"]) == {"forward"} and "sample" not in rows["fno"]
    assert set(rows["eci"]["tasks"]) == {"forward", "inverse", "reconstruct"}
    inverse = rows["PIDDM-ref"]["tasks"]["inverse"]
    assert set(inverse) == {"rel_l2_a", "error_rate_a", "error_rate_a_off_interfaces", "error_rate_a_at_interfaces",
                            "residual", "seconds_per_problem"}  # what inverse recovers
    assert rows["PIDDM-1"]["costs"]["pair_seconds"] > 0 and rows["PIDDM-1"]["costs"]["distill_seconds"] > 0
    assert rows["PIDDM-1"]["nfe"] == 1 and rows["teacher"]["nfe"] == 5
    # DiffusionPDE's Darcy weights, 5 on 0.2 a and 5000 on 115 u, as steps of the same physical size
    std = dict(zip(("a", "u"), torch.load(darcy20 / "teacher" / "last.pt", weights_only=False)["normalization"]["std"]))
    assert rows["diffusionpde-weak"]["settings"]["zeta_obs"] == pytest.approx(
        {"a": 5 / (0.2**2 * std["a"]), "u": 5000 / (115**2 * std["u"])})
    assert rows["dps-weak"]["settings"]["zeta_obs"] == {"a": 0.0, "u": 0.0}
    md = (out / "compare.md").read_text()
    assert "| MMSE a | MMSE u |" in md and "| fno |" in md and "rel l2 u" in md and "| copy ratio |" in md
    assert "| error rate a off interfaces | error rate a at interfaces |" in md
    # the samples behind a task estimate: a student's restarts, one for a guided sampler
    samples = {m["method"]: m["task_samples"] for m in doc["methods"]}
    assert samples["PIDDM-ref"] == doc["budget"]["restarts"] > 1 and samples["diffusionpde-weak"] == 1
    assert f"| PIDDM-ref | {doc['budget']['restarts']} |" in md
    assert rows["teacher"]["sample"]["copy_ratio"]["mean"] > 0
    assert doc["machine"].endswith(f"{torch.get_num_threads()} threads")  # named beside every timing
    for png in ("samples.png", "tasks_forward.png", "tasks_inverse.png", "tasks_reconstruct.png", "tradeoff.png"):
        assert (out / png).stat().st_size > 10_000


@pytest.mark.firedrake
def test_task_samples_gives_every_sampler_with_noise_the_same_posterior_mean(darcy_file, tiny_teacher, tiny_student):
    """Budget.task_samples = K: each stochastic method's task estimate is the mean of K solutions of
    the same problem, each from its own noise; the student's restarts follow K; a method without
    noise (FNO, direct optimisation from the mean) stays at one."""
    from dataclasses import replace

    from piddm_fem import schema
    from piddm_fem.baselines import build
    from piddm_fem.evaluation import QUICK, load_setup
    from piddm_fem.tasks import observation_mask, task_errors

    setup = load_setup(darcy_file, tiny_teacher, {"PIDDM": tiny_student}, replace(QUICK, task_samples=3),
                       device="cpu", min_test=0)
    eci, fno, mean_start, ref = build(["eci", "fno", "direct-mean", "PIDDM-ref"], setup, tasks=["forward"])
    assert [m.task_samples for m in (eci, fno, mean_start, ref)] == [3, 1, 1, 3]
    assert ref.settings["restarts"] == 3
    _, truth, _ = schema.read(darcy_file, [0, 1, 2])
    mask = observation_mask("forward", truth.shape, setup.channels, setup.info.meta, seed=0).numpy()
    observed = np.where(mask > 0, truth, 0.0)
    est = eci.task_estimate("forward", observed, mask, 0)
    assert est.shape == truth.shape
    # ECI keeps each sample's observed entries: so does their mean, problem by problem
    np.testing.assert_allclose(est[mask > 0], truth[mask > 0], rtol=1e-9, atol=1e-9)
    each = eci.solve_task("forward", np.repeat(observed, 3, 0), np.repeat(mask, 3, 0), 0).reshape(3, 3, *truth.shape[1:])
    assert np.abs(each[:, 0] - each[:, 1]).max() > 1e-3  # its own noise per sample
    errors = [task_errors("forward", each[:, k], truth, setup.operator, setup.channels, setup.info.meta)["rel_l2_u"]
              for k in range(3)]
    mean_error = task_errors("forward", est, truth, setup.operator, setup.channels, setup.info.meta)["rel_l2_u"]
    assert np.all(mean_error <= np.mean(errors, axis=0) + 1e-12)  # the norm is convex (Jensen)
    one = replace(setup, budget=replace(setup.budget, task_samples=None))
    (alone,) = build(["eci"], one, tasks=["forward"])
    assert alone.task_samples == 1 and np.abs(alone.task_estimate("forward", observed, mask, 0) - est).max() > 1e-3


@pytest.mark.firedrake
def test_a_k_step_student_counts_k_network_calls_per_sample(darcy20, tmp_path):
    from piddm_fem.baselines import build
    from piddm_fem.evaluation import QUICK, load_setup
    from piddm_fem.student import distill

    distill(darcy20 / "teacher", darcy20 / "data.h5", tmp_path / "k2", steps=2, device="cpu", progress=False,
            k_steps=2, pairs=4, teacher_steps=2, batch=4, val_pairs=4, val_every=2, refresh=0)
    setup = load_setup(darcy20 / "data.h5", darcy20 / "teacher", {"PIDDM": tmp_path / "k2"}, QUICK, "cpu")
    one, ref = build(["PIDDM-1", "PIDDM-ref"], setup)
    assert one.nfe == 2 and ref.nfe == 2 * (1 + QUICK.refine_steps)
    assert one.sample(3, 0).shape == (3, 2, 17, 17)


@pytest.mark.firedrake
def test_compare_bad_input_is_one_line(cli, darcy20, tiny_student, tmp_path):
    base = ("compare", darcy20 / "data.h5", "--teacher", darcy20 / "teacher", "--out", tmp_path / "o",
            "--quick", "--device", "cpu", "--seeds", 0)
    assert_one_line_error(*cli(*base, "--methods", "teacher,diffusion")[::2], "unknown method 'diffusion'")
    assert_one_line_error(*cli(*base, "--methods", "fno", "--tasks", "inverse")[::2],
                          "method fno cannot do inverse", "forward")
    assert_one_line_error(*cli(*base, "--methods", "PIDDM-1")[::2], "needs a student", "--student")
    # tiny_student was distilled from a teacher of another Darcy dataset
    assert_one_line_error(*cli(*base, "--student", tiny_student)[::2], "another dataset", "normalization")
    assert_one_line_error(*cli(*base, "--tasks", "forwards")[::2], "unknown task 'forwards'")
    assert_one_line_error(*cli(*base, "stray")[::2], "unexpected argument 'stray'")
    assert_one_line_error(*cli(*base, "--task-samples", 0)[::2], "--task-samples=0 is outside [1, inf)")


def test_a_method_refuses_a_task_it_cannot_do_by_name():
    from piddm_fem.baselines.sampling import Teacher
    from piddm_fem.errors import PiddmError

    setup = SimpleNamespace(teacher=None, budget=SimpleNamespace(heun_steps=3))
    with pytest.raises(PiddmError, match="method teacher cannot do inverse"):
        Teacher("teacher", setup).solve_task("inverse", None, None, 0)


def test_report_is_keyed_by_the_dataset_channels():
    from piddm_fem.report import compare_markdown

    leaf = {"mean": 0.5, "std": 0.1, "n": 3}
    doc = {"display_name": "poisson", "resolution": 17, "channels": ["f", "u"], "seeds": [0, 1, 2],
           "budget": {"n_eval": 4, "task_problems": 2}, "n_test": 4, "device": "cpu", "tasks": ["forward"],
           "reference": {"residual": {"mean": 1e-14}},
           "methods": [{"method": "teacher", "nfe": 5, "settings": {}, "costs": {},
                        "sample": {"residual": leaf, "mmse": {"f": leaf, "u": leaf}, "smse": {"f": leaf, "u": leaf},
                                   "seconds_per_sample": leaf}},
                       {"method": "fno", "nfe": 1, "task_samples": 1, "settings": {}, "costs": {},
                        "tasks": {"forward": {"rel_l2_u": leaf, "residual": leaf, "seconds_per_problem": leaf}}}]}
    md = compare_markdown(doc)
    assert "| MMSE f | MMSE u | SMSE f | SMSE u |" in md and "0.5 ± 0.1" in md
    assert "| method | samples | rel l2 u | residual | s/problem |" in md and "| fno | 1 | 0.5 ± 0.1 |" in md
    assert "a > thr" not in md and "Darcy" not in md


def _benchmark(name):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.firedrake
def test_gpu_protocol_pipeline_runs_at_tiny_size_on_the_cpu(darcy20, tmp_path, capsys):
    """benchmarks/piddm_pipeline.py (what benchmarks/gpu_session.sh runs): a teacher on a time
    budget whose probe start-up is not counted, the student and its first half as lambda = 0,
    compare.json; then benchmarks/seed_rows.py's tables of the saved rows."""
    pipeline = _benchmark("piddm_pipeline")
    out = tmp_path / "run"
    doc = pipeline.main(["--data", str(darcy20 / "data.h5"), "--out", str(out), "--train-teacher-seconds", "3",
                         "--probe-steps", "2", "--batch", "4", "--distill-steps", "2", "--pairs", "4",
                         "--distill-batch", "4", "--quick", "--seeds", "0", "--methods", "teacher,PIDDM-1,lambda=0,eci,fno",
                         "--task-samples", "2", "--device", "cpu"])
    teacher = doc["pipeline"]["costs"]["teacher"]
    # the budget is training time after the probe's warm-up, not wall time with start-up
    assert 0.9 * 3 <= teacher["trained_seconds"] <= 2 * 3 and teacher["step"] > 4
    saved = json.loads((out / "compare.json").read_text())
    assert [m["method"] for m in saved["methods"]] == ["teacher", "PIDDM-1", "lambda=0", "eci", "fno"]
    assert saved["methods"][2]["settings"]["lambda_train"] == 0.0
    assert [m["task_samples"] for m in saved["methods"][1:]] == [2, 2, 2, 1]  # matched, but for the FNO
    capsys.readouterr()
    _benchmark("seed_rows").main([str(out), "--figure", str(tmp_path / "rows.png")])
    printed = capsys.readouterr().out.splitlines()
    teacher, piddm1 = (next(line for line in printed if line.startswith(f"| {m} |")) for m in ("teacher", "PIDDM-1"))
    rows = json.loads((out / "rows_seed0.json").read_text())["rows"]
    ratio = rows["PIDDM-1"]["sample"]["residual"]["median"] / rows["teacher"]["sample"]["residual"]["median"]
    assert teacher.split(" | ")[2] == "1.000" and piddm1.split(" | ")[2] == f"{ratio:.3f}"  # one seed: its ratio
    eci = next(line for line in printed if line.startswith("| eci |"))  # a task row: its samples first
    assert eci.split(" | ")[1] == "2" and (tmp_path / "rows.png").exists()


def test_seed_rows_names_the_datasets_channels_and_needs_the_teachers_samples():
    sample = {"residual": {"median": 0.5}, "mmse": {"f": 2.0, "u": 4.0}, "smse": {"f": 1.0, "u": 1.0},
              "copy_ratio": 1.0, "seconds_per_sample": 1e-3}
    twice = {**sample, "mmse": {"f": 4.0, "u": 4.0}}
    table = _benchmark("seed_rows").sample_table([{"teacher": {"sample": sample}, "PIDDM-1": {"sample": twice}}],
                                                 ["teacher", "PIDDM-1"])
    assert table[0] == "| method | median residual | x teacher | MMSE f | MMSE u | SMSE f | SMSE u | copy ratio | ms/sample |"
    assert table[3].startswith("| PIDDM-1 | 0.5 | 1.000 | 2.00 | 1.00 | 1.00 | 1.00 |")
    assert _benchmark("seed_rows").sample_table([{"eci": {"tasks": {}}}], ["eci"]) == []  # no teacher: no ratios


@pytest.mark.firedrake
def test_error_against_time_scales_every_method_alike(darcy20, tmp_path):
    """benchmarks/error_vs_time.py: one comparison per scale, each method's iteration counts times
    the scale, and a curve per method over the scales (samples and each task)."""
    from piddm_fem.report import tradeoff_axes

    evt = _benchmark("error_vs_time")
    out = tmp_path / "evt"
    argv = ["--data", str(darcy20 / "data.h5"), "--teacher", str(darcy20 / "teacher"), "--student",
            str(darcy20 / "student"), "--out", str(out), "--scales", "1", "2", "--seeds", "0", "--quick",
            "--methods", "teacher,PIDDM-1,PIDDM-ref,diffusionpde-weak,eci", "--tasks", "forward,inverse",
            "--device", "cpu"]
    docs = evt.main(argv)
    budgets = [d["budget"] for d in docs]
    for knob in ("heun_steps", "guidance_steps", "refine_steps", "task_steps"):
        assert budgets[1][knob] == 2 * budgets[0][knob]
    rows = {m["method"]: m for m in docs[1]["methods"]}
    assert rows["PIDDM-ref"]["settings"]["task_steps"] == 2 * budgets[0]["task_steps"]
    assert rows["diffusionpde-weak"]["settings"]["steps"] == 2 * budgets[0]["guidance_steps"]
    axes = tradeoff_axes(docs)
    assert [a[0] for a in axes] == ["relative residual of samples", "forward: rel l2 u", "inverse: error rate a"]
    assert set(axes[0][1]) == {"teacher", "PIDDM-1", "PIDDM-ref"}  # the methods that sample
    assert set(axes[2][1]) == {"PIDDM-1", "PIDDM-ref", "diffusionpde-weak", "eci"}
    assert all(len(x) == 2 for x, _, _ in axes[2][1].values())  # one point per scale
    assert (out / "error_vs_time.png").stat().st_size > 10_000
    assert "| PIDDM-ref |" in (out / "error_vs_time.md").read_text()
    # a rerun reuses every saved row of every scale: nothing is sampled again
    again = evt.main(argv)
    assert [d["methods"] for d in again] == [d["methods"] for d in docs]
    # --tasks none: the samples' curve alone (issue 12's PIDDM-ref against its refinement steps)
    alone = evt.main(["--data", str(darcy20 / "data.h5"), "--teacher", str(darcy20 / "teacher"), "--student",
                      str(darcy20 / "student"), "--out", str(tmp_path / "alone"), "--scales", "1", "2", "--seeds", "0",
                      "--quick", "--methods", "PIDDM-ref", "--tasks", "none", "--device", "cpu"])
    assert [a[0] for a in tradeoff_axes(alone)] == ["relative residual of samples"]
    assert [d["methods"][0]["settings"]["refine_steps"] for d in alone] == [b["refine_steps"] for b in budgets]


def test_claims_report_a_failure_with_the_numbers():
    from piddm_fem.report import claims

    def row(name, residual, nfe, mean_flag, mmse, steps=None):
        leaf = {"mean": mmse, "std": 0.0, "n": 3}
        return {"method": name, "nfe": nfe, "posterior_mean": mean_flag, "settings": {"steps": steps} if steps else {},
                "sample": {"residual": {"mean": residual}, "mmse": {"u": leaf}, "smse": {"u": leaf},
                           "seconds_per_sample": {"mean": 1e-3 * nfe}}}

    doc = {"channels": ["u"], "methods": [row("PIDDM-1", 0.5, 1, False, 2.0), row("dps-weak", 0.2, 199, True, 1.0, 100),
                                          row("teacher", 0.6, 35, False, 1.0)]}
    text = "\n".join(claims(doc))
    assert "residual below every posterior-mean method's: FAILS (0.5 vs 0.2, dps-weak)" in text
    assert "fewer NFE than guided sampling: holds (199x" in text
    assert "MMSE u no worse than 1.5x the best baseline's: FAILS (2 vs 1" in text


@pytest.mark.firedrake
def test_compare_resumes_finished_methods(darcy20, tmp_path, monkeypatch):
    from dataclasses import replace

    from piddm_fem.baselines.eci import ECI
    from piddm_fem.evaluation import QUICK, compare, load_setup

    setup = load_setup(darcy20 / "data.h5", darcy20 / "teacher", budget=QUICK, device="cpu", out_dir=tmp_path)
    first = compare(setup, ["teacher", "eci"], [0, 1], figures=False)
    saved = json.loads((tmp_path / "rows_seed1.json").read_text())
    saved["rows"]["eci"]["tasks"]["forward"]["rel_l2_u"] = 123.0  # a finished row is read back, not rerun
    (tmp_path / "rows_seed1.json").write_text(json.dumps(saved))
    again = compare(setup, ["teacher", "eci"], [0, 1], figures=False)
    assert again["methods"][0]["sample"] == first["methods"][0]["sample"]
    assert again["methods"][1]["tasks"]["forward"]["rel_l2_u"]["mean"] > 60
    alone = compare(setup, ["eci"], [1], figures=False)  # also when the other methods change
    assert alone["methods"][0]["tasks"]["forward"]["rel_l2_u"]["mean"] > 60
    compare(setup, ["eci", "direct"], [1], figures=False)  # a new method is added to the seed's rows
    assert set(json.loads((tmp_path / "rows_seed1.json").read_text())["rows"]) == {"teacher", "eci", "direct"}
    with monkeypatch.context() as m:  # another machine: its timings are not mixed with these, computed afresh
        m.setattr("piddm_fem.evaluation.machine", lambda device: "another machine")
        assert compare(setup, ["eci"], [1], figures=False)["methods"][0]["tasks"]["forward"]["rel_l2_u"]["mean"] < 10
    (tmp_path / "rows_seed1.json").write_text(json.dumps(saved))
    setup.budget = replace(QUICK, task_problems=3)  # another budget: computed afresh
    assert compare(setup, ["eci"], [1], figures=False)["methods"][0]["tasks"]["forward"]["rel_l2_u"]["mean"] < 10
    (tmp_path / "rows_seed1.json").write_text(json.dumps(saved))
    other = load_setup(darcy20 / "data.h5", darcy20 / "other_teacher", budget=QUICK, device="cpu", out_dir=tmp_path)
    assert compare(other, ["eci"], [1], figures=False)["methods"][0]["tasks"]["forward"]["rel_l2_u"]["mean"] < 10

    # interrupted in its second method, a seed keeps its first; the rerun does the second only
    setup.budget = QUICK

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(ECI, "solve_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        compare(setup, ["teacher", "eci"], [2])
    kept = json.loads((tmp_path / "rows_seed2.json").read_text())
    assert list(kept["rows"]) == ["teacher"]
    kept["rows"]["teacher"]["sample"]["fraction_a_above"] = 7.0
    (tmp_path / "rows_seed2.json").write_text(json.dumps(kept))
    monkeypatch.undo()
    done = compare(setup, ["teacher", "eci"], [2])
    assert done["methods"][0]["sample"]["fraction_a_above"]["mean"] == 7.0
    assert "forward" in done["methods"][1]["tasks"]
    assert {"samples.png", "tasks_forward.png"} <= set(done["figures"].values())  # the teacher's field came back

    # the FNO trains on first use: with its rows saved, a rerun does not train it again, and keeps its costs
    trained = compare(setup, ["fno"], [0, 1], figures=False)["methods"][0]["costs"]
    assert trained["steps"] >= 1

    def untrainable(*args, **kwargs):
        raise AssertionError("the FNO was trained again")

    monkeypatch.setattr("piddm_fem.baselines.fno.train_fno", untrainable)
    assert compare(setup, ["fno"], [0, 1], figures=False)["methods"][0]["costs"] == trained

def test_the_copy_ratio_tells_copies_of_the_training_data_from_fresh_samples():
    """Smooth random fields on two channels of different scales: near-copies of training fields
    score near 0, fresh fields from the same distribution near 1."""
    from piddm_fem.metrics import copy_ratio

    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 17)

    def fields(n):
        k = rng.normal(size=(n, 2, 3, 1, 1))
        a = sum(k[:, :, j] * np.sin((j + 1) * np.pi * x)[None, None, :, None] * np.sin(np.pi * x)[None, None, None, :]
                for j in range(3))
        return a * np.array([4.5, 4e-3]).reshape(1, 2, 1, 1) + np.array([7.5, 5e-3]).reshape(1, 2, 1, 1)

    train, test = fields(300), fields(60)
    copies = train[rng.choice(300, 60)] + 1e-3 * train.std(axis=(0, 2, 3)).reshape(1, 2, 1, 1) * rng.normal(size=(60, 2, 17, 17))
    assert copy_ratio(copies, train, test) < 0.05
    assert 0.8 < copy_ratio(fields(60), train, test) < 1.25
