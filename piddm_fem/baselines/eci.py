"""ECI sampling (Cheng et al., ICLR 2025) on the teacher, for the tasks.

Gradient-free, the authors' loop (their ``FFM.eci_sample``) in EDM's noise levels: at level
sigma_i the teacher's x0 prediction D(x; sigma_i) is *extrapolated*, its observed entries are
*corrected* to the observations (x0c), and x0c is *interpolated* back with the sampler's noise n,
x = x0c + sigma n. ``mix`` such rounds per level, the last one to sigma_{i+1}, the others back to
sigma_i, so that the correction spreads to the unobserved entries before the level drops; n is
redrawn every ``resample_every`` network evaluations (0: never, n stays the initial eps). The last
level lands on x0c: the observed entries are reproduced exactly. (Until 2026-11-27 this was a
one-round deterministic variant that re-noised with the model's noise estimate, (x - D) / sigma;
docs/baselines.md has the selection that replaced it.)
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from piddm_fem.baselines import BaseMethod
from piddm_fem.edm import RESAMPLE_STREAM, RowNoise, sigma_steps

MIX, RESAMPLE_EVERY = 5, 1  # chosen from three trials (docs/baselines.md)


@torch.no_grad()
def eci_sample(net, eps, num_steps: int, target: torch.Tensor, mask: torch.Tensor, mix: int = MIX,
               resample_every: int = RESAMPLE_EVERY, fresh: RowNoise | None = None) -> torch.Tensor:
    """Normalised x0 [B, C, S, S] equal to ``target`` where ``mask`` is 1; ``num_steps`` levels x
    ``mix`` network evaluations. ``fresh``: where redrawn noise comes from (a ``RowNoise`` of the
    batch's problems on RESAMPLE_STREAM; required when ``resample_every`` > 0)."""
    if resample_every and fresh is None:
        raise ValueError("eci_sample: resampling needs a RowNoise to draw from")
    t_steps = sigma_steps(num_steps).to(eps.device)
    observed = mask.to(torch.float64) > 0
    target = target.to(torch.float64)
    noise = eps.to(torch.float64)
    x, evaluations = noise * t_steps[0], 0
    for t_cur, t_next in itertools.pairwise(t_steps):
        for round_ in range(mix):
            evaluations += 1
            if resample_every and evaluations % resample_every == 0:
                noise = fresh.draw(noise.shape[1:], noise.device, torch.float64)
            corrected = torch.where(observed, target, net(x, t_cur).to(torch.float64))
            x = corrected + (t_next if round_ == mix - 1 else t_cur) * noise
    return x


class ECI(BaseMethod):
    def __init__(self, name, setup):
        super().__init__(name, setup)
        self.can = self.masked_tasks
        self.steps = 2 * setup.budget.heun_steps - 1
        self.nfe = self.steps * MIX
        self.settings = {"steps": self.steps, "mix": MIX, "resample_every": RESAMPLE_EVERY}

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        m = torch.as_tensor(np.asarray(mask), device=self.setup.device)
        x0 = eci_sample(self.setup.teacher, self.noise(seed, len(observed)), self.steps,
                        self.to_norm(observed), m, fresh=RowNoise(seed, np.arange(len(observed)), RESAMPLE_STREAM))
        return self.to_physical(x0)
