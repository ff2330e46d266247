"""ECI-style constrained sampling (Cheng et al. 2025) on the teacher, for the tasks.

Gradient-free: at each step the teacher's x0 prediction D(x_i; sigma_i) is *extrapolated*, its
observed entries are *corrected* to the observations, and the corrected x0 is *interpolated* back
to the next noise level with the model's own noise estimate, x_{i+1} = x0c + sigma_{i+1} (x_i - D)
/ sigma_i (a deterministic Euler/DDIM step). The last step lands on x0c: the observed entries are
reproduced exactly. 2 N_s - 1 steps, one network evaluation each: the teacher's NFE.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from piddm_fem.baselines import BaseMethod
from piddm_fem.edm import sigma_steps


@torch.no_grad()
def eci_sample(net, eps, num_steps: int, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised x0 [B, C, S, S] equal to ``target`` where ``mask`` is 1."""
    t_steps = sigma_steps(num_steps).to(eps.device)
    observed = mask.to(torch.float64) > 0
    target = target.to(torch.float64)
    x = eps.to(torch.float64) * t_steps[0]
    for t_cur, t_next in itertools.pairwise(t_steps):
        denoised = net(x, t_cur).to(torch.float64)
        corrected = torch.where(observed, target, denoised)
        x = corrected + t_next * (x - denoised) / t_cur
    return x


class ECI(BaseMethod):
    def __init__(self, name, setup):
        super().__init__(name, setup)
        self.can = self.masked_tasks
        self.steps = 2 * setup.budget.heun_steps - 1
        self.nfe = self.steps
        self.settings = {"steps": self.steps}

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        m = torch.as_tensor(np.asarray(mask), device=self.setup.device)
        x0 = eci_sample(self.setup.teacher, self.noise(seed, len(observed)), self.steps,
                        self.to_norm(observed), m)
        return self.to_physical(x0)
