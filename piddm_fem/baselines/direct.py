"""Direct data-space optimisation, the reviewers' baseline for Algorithm 3: Adam on the field x
itself (normalised units), from the teacher's sample or from the data mean, on

    masked misfit (mean square over observed entries, normalised) + lambda P(x)

(P: the tasks' physics penalty in the budget's norm, by default the operator's natural norm,
relative to a typical load: ``dual_norm.PhysicsPenalty``): the student's objective without the
student. With no observations (``sample``) it refines teacher samples on the l2 residual alone
(lambda_infer, as PIDDM-ref)."""

from __future__ import annotations

import numpy as np
import torch

from piddm_fem.baselines import BaseMethod
from piddm_fem.dual_norm import PhysicsPenalty
from piddm_fem.edm import heun_sample


def optimize_fields(z0: torch.Tensor, normalizer, penalty, target=None, mask=None, steps: int = 100,
                    lam: float = 1e-3, lr: float = 0.05) -> torch.Tensor:
    """Adam on a copy of ``z0`` (normalised [B, C, S, S]) against ``lam * penalty(x)`` plus the
    masked misfit; returns the optimised copy (detached)."""
    z = z0.detach().clone().to(torch.float64).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    count = None if mask is None else mask.flatten(1).sum(1).clamp(min=1.0)
    for _ in range(steps):
        loss = lam * penalty(normalizer.denormalize(z))
        if mask is not None:
            loss = loss + ((z - target) * mask).square().flatten(1).sum(1) / count
        z.grad, = torch.autograd.grad(loss.sum(), [z])
        opt.step()
    return z.detach()


class Direct(BaseMethod):
    def __init__(self, name, setup, init: str):
        super().__init__(name, setup)
        b = setup.budget
        self.init = init
        self.deterministic = init == "mean"  # from the mean: no noise
        self.can = (("sample",) if init == "teacher" else ()) + self.masked_tasks
        self.nfe = 2 * b.heun_steps - 1 if init == "teacher" else 0
        self.settings = {"init": init, "steps": b.task_steps, "norm_tasks": setup.task_norm,
                         "lambda_tasks": setup.task_weight, "lambda_sample": b.lambda_infer, "lr": b.direct_lr}

    def _start(self, seed: int, n: int) -> torch.Tensor:
        if self.init == "mean":  # normalised units: the training mean is zero
            return torch.zeros((n, *self.setup.shape), dtype=torch.float64, device=self.setup.device)
        x0, _ = heun_sample(self.setup.teacher, self.noise(seed, n), self.setup.budget.heun_steps)
        return x0.double()

    def sample(self, n: int, seed: int) -> np.ndarray:
        if "sample" not in self.can:
            return super().sample(n, seed)
        b = self.setup.budget
        z = optimize_fields(self._start(seed, n), self.setup.normalizer, PhysicsPenalty(self.setup.operator),
                            steps=b.task_steps, lam=b.lambda_infer, lr=b.direct_lr)
        return self.to_physical(z)

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        b = self.setup.budget
        m = torch.as_tensor(np.asarray(mask), dtype=torch.float64, device=self.setup.device)
        penalty = PhysicsPenalty(self.setup.operator, self.setup.task_norm, self.setup.normalizer)
        z = optimize_fields(self._start(seed, len(observed)), self.setup.normalizer, penalty, self.to_norm(observed),
                            m, steps=b.task_steps, lam=self.setup.task_weight, lr=b.direct_lr)
        return self.to_physical(z)
