"""Masked latent optimisation with one student (the paper's Algorithm 3) and PIDDM-ref.

Given observations x' on a mask M (physical units), optimise the student's input noise eps for

    ||(G(eps) - x') * M||^2 + lam * P(x_mix) + prior(eps),   x_mix = x' M + G(eps) (1 - M)

and return x_mix. The misfit is measured in normalised units (channels comparable) and averaged
over observed entries; P is the physics penalty (``dual_norm.PhysicsPenalty``) relative to a
typical load: by default the operator's ``natural_norm``, the weak residual in the dual norm of
the constant-coefficient stiffness where the unknown is Dirichlet on the whole boundary (it weighs
the residual like an error in u; docs/distillation.md says why), else "l2", the mean square of the
scaled residual (``ResidualOperator.loss``); each norm has its own default weight
(``TASK_LAMBDA``). The prior ``(|eps|^2 / d - 1)^2`` keeps eps on the Gaussian shell. With an
empty mask this is the refinement PIDDM-ref (absolute l2, lam = lambda_infer). Every problem and
restart is optimised independently in one batch: the objective is a sum over the batch.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from piddm_fem.checks import check_range
from piddm_fem.dual_norm import PhysicsPenalty, check_norm
from piddm_fem.errors import PiddmError

TASK_STEPS, RESTARTS = 200, 4  # Adam steps on eps, and eps per problem, of Algorithm 3
LAMBDA_INFER = 1e-2  # PIDDM-ref: the weight of the mean square scaled residual
TASK_LAMBDA = {"l2": 1e-3, "dual": 0.35}  # the default weight of each relative norm on the tasks (docs/distillation.md)


def task_weight(norm: str, lam: float | None) -> float:
    """The physics weight on the tasks: ``lam`` (>= 0), or ``norm``'s default (``TASK_LAMBDA``) when None."""
    return TASK_LAMBDA[check_norm(norm)] if lam is None else check_range("physics weight", lam, "[0, inf)")


def _region(region, S: int, rng: np.random.Generator | None, what: str,
            points: int | None = None, fraction: float | None = None) -> torch.Tensor:
    """[S, S] bool mask of one region of a task spec (``Problem.tasks``); ``points`` and
    ``fraction`` override the spec's values."""
    m = torch.zeros(S, S, dtype=torch.bool)
    if region == "all":
        m[:] = True
        return m
    allowed = torch.ones(S, S, dtype=torch.bool)
    allowed[list(region.get("exclude_rows", []))] = False
    if "rows" in region:
        m[list(region["rows"])] = True
    elif "columns" in region:
        m[:, np.unique(np.rint(np.linspace(0, S - 1, int(region["columns"]))).astype(int))] = True
    elif "points" in region:
        p = points if points is not None else max(1, round(region["points"] * S * S / 128**2))
        free = int(allowed.sum())
        if not 1 <= p <= free:
            raise PiddmError(f"--points {p} must be between 1 and {free} grid nodes for {what}")
        nodes = rng.choice(np.flatnonzero(allowed.numpy().ravel()), size=p, replace=False)
        m.view(-1)[torch.from_numpy(nodes)] = True
    elif "fraction" in region:
        f = fraction if fraction is not None else region["fraction"]
        if not 0 < f < 1:
            raise PiddmError(f"--fraction {f} must lie strictly between 0 and 1")
        m = torch.from_numpy(rng.random((S, S)) < f)
    else:
        raise PiddmError(f"{what}: unknown region {region!r}; regenerate the dataset with `piddm generate`")
    return m & allowed


def task_spec(meta: dict, task: str) -> dict:
    """The observe/recover spec of ``task`` in the problem's metadata (``Problem.tasks``)."""
    if task not in meta["tasks"]:
        raise PiddmError(f"unknown task {task!r}; choose one of {', '.join(meta['tasks'])}")
    return meta["tasks"][task]


def check_observation_options(meta: dict, task: str, points: int | None, fraction: float | None) -> None:
    """Refuse ``points`` or ``fraction`` (given: not None) where ``task`` observes no such region."""
    observe = task_spec(meta, task)["observe"]
    for option, key, value in (("--points", "points", points), ("--fraction", "fraction", fraction)):
        if value is not None and not any(isinstance(r, dict) and key in r for r in observe.values()):
            raise PiddmError(f"{option} does not apply to task {task}, which observes no random {key}; drop it")


def observation_mask(task: str, shape, channels: list[str], meta: dict, *, points: int | None = None,
                     fraction: float | None = None, seed: int = 0) -> torch.Tensor:
    """[N, C, S, S] float mask of what ``task`` observes, from the problem's metadata: e.g.
    forward observes the coefficients, inverse random nodes of the solution (their number at
    S = 128, scaled with S^2, or ``points``), reconstruct a random ``fraction`` of every channel.
    Each problem n draws its nodes from (seed, n)."""
    N, C, S, _ = shape
    check_observation_options(meta, task, points, fraction)
    mask = torch.zeros(shape)
    for n in range(N):
        rng = np.random.default_rng([seed, n])
        for name, region in task_spec(meta, task)["observe"].items():
            mask[n, channels.index(name)] = _region(region, S, rng, f"task {task}", points, fraction).float()
    return mask


def recovery_mask(task: str, S: int, channels: list[str], meta: dict) -> dict[int, torch.Tensor]:
    """{channel index: [S, S] bool} of what ``task`` recovers: the nodes its errors are taken on."""
    return {channels.index(name): _region(region, S, None, f"task {task}")
            for name, region in task_spec(meta, task)["recover"].items()}


def optimize_latent(student, normalizer, operator, observed: torch.Tensor, mask: torch.Tensor,
                    eps: torch.Tensor, steps: int = TASK_STEPS, lam: float | None = None, prior: float = 1.0,
                    lr: float = 0.05, callback=None, exact=None, norm: str | None = None,
                    per_sample: bool = False) -> dict:
    """Optimise eps [N, C, S, S] (one row per problem/restart); returns x_mix (physical units,
    detached), eps and the final per-row misfit and relative residual. ``observed`` and ``mask``
    are [N, C, S, S] in physical units (unobserved entries of ``observed`` are ignored). ``norm``
    (None: the operator's natural norm) and ``lam`` (None: ``TASK_LAMBDA[norm]``) choose the
    physics penalty and its weight; the penalty is relative to the typical load, or with
    ``per_sample`` to each sample's own (``dual_norm.PhysicsPenalty``).

    ``exact`` (e.g. ``LinearFEMSolve(operator).solve``) replaces the student's unknown by the FEM
    solution for the coefficients of x_mix (observed where observed, the student's elsewhere):
    exact physics, so the residual penalty is dropped, the student's own u is never compared with
    the data, and the returned u solves the PDE for the returned coefficients (away from observed
    u nodes, which are returned as observed). The student's coefficients are still fitted to their
    observations."""
    device = eps.device
    penalty = PhysicsPenalty(operator, norm, None if per_sample else normalizer, per_sample=per_sample)
    lam = task_weight(penalty.norm, lam)
    observed, mask = observed.to(device, torch.float32), mask.to(device, torch.float32)
    target = normalizer.normalize(observed)
    eps = eps.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([eps], lr=lr)
    d = eps[0].numel()
    count = mask.flatten(1).sum(1).clamp(min=1.0)
    unknown = (torch.arange(eps.shape[1], device=device) == operator.unknown).reshape(1, -1, 1, 1)

    def evaluate():
        pred = student(eps)
        x_mix = observed * mask + normalizer.denormalize(pred) * (1 - mask)
        if exact is not None:
            solved = exact(x_mix)
            pred = torch.where(unknown, normalizer.normalize(solved), pred)
            x_mix = observed * mask + solved * (1 - mask)
        misfit = ((pred - target) * mask).square().flatten(1).sum(1) / count
        physics = penalty(x_mix) if exact is None else torch.zeros_like(misfit)
        shell = (eps.square().flatten(1).sum(1) / d - 1).square()
        return misfit, physics, shell, x_mix

    for step in range(steps):
        misfit, physics, shell, _ = evaluate()
        loss = (misfit + lam * physics + prior * shell).sum()
        eps.grad, = torch.autograd.grad(loss, [eps])  # the student's weights are left alone
        opt.step()
        if callback is not None:
            callback(step + 1, float(misfit.mean()), float(physics.mean()))
    with torch.no_grad():
        misfit, physics, shell, x_mix = evaluate()
        relative = operator.relative(x_mix.double())
    return {"x": x_mix.detach(), "eps": eps.detach(), "misfit": misfit, "relative_residual": relative}


def refine(student, normalizer, operator, eps: torch.Tensor, steps: int, lambda_infer: float,
           prior: float = 1.0, lr: float = 0.05, callback=None) -> dict:
    """PIDDM-ref: optimise eps against the residual alone (no observations): lambda_infer times
    the square of each sample's relative residual (l2, the one reported). It is scale-free: a
    penalty in physical units, or over one typical load, was lowered most by shrinking the
    samples of a problem whose load is a field of the sample (Poisson, Helmholtz: f 23-35%
    smaller after 40 steps at a barely lower relative residual; docs/results.md, eighteenth session)."""
    x = torch.zeros_like(eps)
    return optimize_latent(student, normalizer, operator, x, torch.zeros_like(eps), eps, steps=steps,
                           lam=lambda_infer, prior=prior, lr=lr, callback=callback, norm="l2", per_sample=True)


def infer_masked(student, normalizer, operator, observed, mask, *, steps: int = TASK_STEPS, lam: float | None = None,
                 restarts: int = RESTARTS, seed: int = 0, prior: float = 1.0, lr: float = 0.05,
                 exact=None, norm: str | None = None) -> dict:
    """Algorithm 3 for N problems: ``observed`` and ``mask`` [N, C, S, S] (physical units; the
    unobserved entries of ``observed`` are ignored), ``restarts`` eps per problem (noise indices
    0..restarts-1 of ``seed``). With ``steps`` > 0 the estimate is the ensemble mean over the restarts (std
    beside it); with ``steps`` = 0 it is one student call on the restart whose output fits the
    observations best (std over the restarts still reported). Observed entries are returned
    exactly. ``exact``, ``norm`` and ``lam``: see ``optimize_latent``. Returns {"mean", "std" (torch float64
    [N, C, S, S], CPU), "seconds"}."""
    from piddm_fem.edm import noise_for_indices

    if restarts < 1 or steps < 0:
        raise PiddmError(f"--restarts {restarts} must be >= 1 and --steps {steps} >= 0")
    observed = torch.as_tensor(observed, dtype=torch.float64)
    mask = torch.as_tensor(mask, dtype=torch.float64)
    N, C, S, _ = observed.shape
    device = next(student.parameters()).device
    # every problem starts from restarts 0..R-1 of the seed: a problem's answer does not depend on
    # the others in the batch
    eps = noise_for_indices(seed, np.tile(np.arange(restarts), N), (C, S, S), device=device)
    t0 = time.perf_counter()
    result = optimize_latent(student, normalizer, operator, observed.float().repeat_interleave(restarts, 0),
                             mask.float().repeat_interleave(restarts, 0), eps, steps=steps, lam=lam,
                             prior=prior, lr=lr, exact=exact, norm=norm)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    x = result["x"].double().cpu().reshape(N, restarts, C, S, S)
    if steps:
        estimate = x.mean(1)
    else:
        best = result["misfit"].reshape(N, restarts).argmin(1).cpu()
        estimate = x[torch.arange(N), best]
    observed_mask = mask.bool()
    mean = torch.where(observed_mask, observed, estimate)
    std = torch.where(observed_mask, 0.0, x.std(1, unbiased=False))
    return {"mean": mean, "std": std, "seconds": seconds}


def solve_task(student, normalizer, operator, ckpt: dict, task: str, truth: np.ndarray, *,
               points: int | None = None, fraction: float | None = None, steps: int = TASK_STEPS,
               lam: float | None = None, restarts: int = RESTARTS, seed: int = 0, prior: float = 1.0,
               lr: float = 0.05, norm: str | None = None) -> dict:
    """Run a task on ground-truth samples ``truth`` [N, C, S, S] with ``restarts`` eps per problem.

    Returns the ensemble mean and std [N, C, S, S], the mask, per-problem errors of the mean and
    the seconds spent: ``task_errors``."""
    from piddm_fem.checkpoint import meta

    channels = list(ckpt["channels"])
    mask = observation_mask(task, truth.shape, channels, meta(ckpt), points=points, fraction=fraction,
                            seed=seed)
    result = infer_masked(student, normalizer, operator, truth, mask, steps=steps, lam=lam,
                          restarts=restarts, seed=seed, prior=prior, lr=lr, norm=norm)
    mean = result["mean"]
    return {"mean": mean.numpy(), "std": result["std"].numpy(), "mask": mask.numpy(),
            "errors": task_errors(task, mean, truth, operator, channels, meta(ckpt)),
            "seconds": result["seconds"]}


def task_errors(task: str, estimate, truth, operator, channels: list[str], meta: dict) -> dict:
    """Per problem: the relative L2 error of every recovered channel on the recovered nodes
    (``rel_l2_<channel>``), the thresholded error rate of a binary channel (``error_rate_<channel>``)
    with its two parts, off the truth's interfaces (``..._off_interfaces``: wrong regions) and at
    them (``..._at_interfaces``: interface placement; ``metrics.binary_errors``), and the relative
    residual of the estimate."""
    from piddm_fem import metrics

    errors = {}
    for c, region in recovery_mask(task, truth.shape[-1], channels, meta).items():
        name = channels[c]
        errors[f"rel_l2_{name}"] = metrics.relative_l2(estimate, truth, c, region.numpy())
        if name in meta["thresholds"]:
            errors.update(metrics.binary_errors(estimate, truth, c, name, meta["thresholds"][name], region.numpy()))
    errors["residual"] = metrics.residual(operator, estimate)
    return errors
