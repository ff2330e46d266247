"""Sampling-time guidance on the posterior mean E[x0|xt]: DiffusionPDE (observations and PDE) and
DPS/CoCoGen-style residual guidance (PDE only), on the teacher's Heun sampler.

DiffusionPDE's update (Huang et al. 2024, public code, `generate_*.py`): at each Heun step from
x_i, the denoiser's last output D (at the Euler predictor, or at x_i on the final step) is the
Tweedie estimate; the losses are the observation loss ||M (D - y)||_2 (not squared) and the PDE
loss ||r(D)||_2 / S^2, their gradients are taken with respect to x_i through the network, and
x_{i+1} <- x_{i+1} - zeta_obs grad(obs) for the first 80% of the steps, then
x_{i+1} <- x_{i+1} - 0.1 zeta_obs grad(obs) - zeta_pde grad(pde).
Here the observation loss is one norm per channel, as theirs, taken in normalised units with
their weights converted to those units (``observation_weights``), and r is either their
finite-difference stencil with the correct 1/h^2 scaling (``fd``) or the weak-form operator's
strong-form residual (``weak``, the same units).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from piddm_fem.baselines import BaseMethod
from piddm_fem.edm import sigma_steps
from piddm_fem.errors import PiddmError

ZETA_OBS_2000 = 5.0  # DiffusionPDE's Darcy coefficient weight at its 2000 steps, in normalised units (the rule below)


def observation_weights(budget, meta: dict, normalizer, channels) -> np.ndarray:
    """zeta_obs of every channel, in normalised units: the budget's ``zeta_obs`` when set; else
    DiffusionPDE's own weight where the problem declares it (``Problem.diffusionpde_observation``:
    zeta on its fields x = s field + offset), converted to a step of the same size in physical
    units, zeta / (s^2 std) with std the channel's normalisation, and used at any step count; else
    5 sqrt(2000 / N) at N guidance steps. The rules and the trials that chose them are in
    docs/baselines.md."""
    from piddm_fem.evaluation import GUIDED_STEPS

    if budget.zeta_obs is not None:
        return np.full(len(channels), float(budget.zeta_obs))
    published = meta.get("diffusionpde_observation") or {}
    rule = ZETA_OBS_2000 * (GUIDED_STEPS / budget.guidance_steps) ** 0.5
    return np.array([published[c][0] / (published[c][1] ** 2 * std) if c in published else rule
                     for c, std in zip(channels, normalizer.std)])


def guided_heun(net, eps, num_steps: int, obs_loss=None, pde_loss=None, zeta_obs: float = 0.0,
                zeta_pde: float = 0.0, pde_from: float = 0.8) -> torch.Tensor:
    """DiffusionPDE-style guided Heun sampling in normalised space (float64 state).

    ``obs_loss(D)`` and ``pde_loss(D)`` map the Tweedie estimate D [B, C, S, S] to per-sample
    losses, [B] or [B, C] for ``obs_loss`` with ``zeta_obs`` a weight per channel [C]; either may
    be None. Returns x0 (detached)."""
    t_steps = sigma_steps(num_steps).to(eps.device)
    x_next = eps.to(torch.float64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(itertools.pairwise(t_steps)):
        x_cur = x_next.detach().requires_grad_(True)
        denoised = net(x_cur, t_cur).to(torch.float64)
        d_cur = (x_cur - denoised) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur
        if t_next > 0:
            denoised = net(x_next, t_next).to(torch.float64)
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * (x_next - denoised) / t_next)
        late = i > pde_from * num_steps
        loss = torch.zeros((), dtype=torch.float64, device=eps.device)
        if obs_loss is not None:
            loss = loss + (0.1 if late and pde_loss is not None else 1.0) * (zeta_obs * obs_loss(denoised)).sum()
        if pde_loss is not None and zeta_pde and late:
            loss = loss + zeta_pde * pde_loss(denoised).sum()
        if loss.requires_grad:
            grad, = torch.autograd.grad(loss, [x_cur])
            x_next = x_next - grad
        x_next = x_next.detach()
    return x_next


class Guidance(BaseMethod):
    """``observe=True``: DiffusionPDE on the tasks; ``observe=False``: DPS/CoCoGen-style
    unconditional sampling with the PDE term only (same schedule, zeta_obs = 0)."""

    posterior_mean = True

    def __init__(self, name, setup, residual: str, observe: bool):
        from piddm_fem.evaluation import fd_residual_of

        super().__init__(name, setup)
        b = setup.budget
        self.residual, self.observe = residual, observe
        self.can = self.masked_tasks if observe else ("sample",)
        self.steps = b.guidance_steps
        weights = observation_weights(b, setup.info.meta, setup.normalizer, setup.channels)
        self.zeta_obs = torch.as_tensor(weights if observe else 0 * weights, device=setup.device)
        self.nfe = 2 * self.steps - 1
        S = setup.info.resolution
        if residual == "fd":
            probe = torch.zeros((1, *setup.shape), dtype=torch.float64)
            if fd_residual_of(setup.info, probe) is None:
                raise PiddmError(f"method {name}: no finite-difference residual for {setup.info.problem}; "
                                 f"use {name.replace('-fd', '-weak')}")

            def r(x):
                return fd_residual_of(setup.info, x, setup.operator)
        else:
            r = setup.operator.scaled
        self._r = r
        self.scale = 1.0 / S**2
        self.settings = {"steps": self.steps, "zeta_obs": dict(zip(setup.channels, self.zeta_obs.tolist())),
                         "zeta_pde": b.zeta_pde, "pde_from": b.pde_from, "residual": residual}

    def pde_loss(self, denoised: torch.Tensor) -> torch.Tensor:
        """||r(D)||_2 / S^2 per sample, D in normalised units."""
        x = self.setup.normalizer.denormalize(denoised)
        return self._r(x).flatten(1).norm(dim=1) * self.scale

    def _run(self, eps, obs_loss=None) -> np.ndarray:
        b = self.setup.budget
        x0 = guided_heun(self.setup.teacher, eps, self.steps, obs_loss, self.pde_loss, self.zeta_obs,
                         b.zeta_pde, b.pde_from)
        return self.to_physical(x0)

    def sample(self, n: int, seed: int) -> np.ndarray:
        if "sample" not in self.can:
            return super().sample(n, seed)
        eps = self.noise(seed, n)
        return np.concatenate([self._run(eps[s:s + self.setup.budget.batch])
                               for s in range(0, n, self.setup.budget.batch)])

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        target = self.to_norm(observed)
        m = torch.as_tensor(np.asarray(mask), dtype=torch.float64, device=self.setup.device)

        def obs_loss(denoised):  # [B, C]: one norm per channel, each with its own zeta
            return ((denoised - target) * m).flatten(2).norm(dim=2)

        return self._run(self.noise(seed, len(observed)), obs_loss)
