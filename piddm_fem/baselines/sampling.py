"""The teacher itself: Heun on the probability-flow ODE, N_s steps (2 N_s - 1 NFE)."""

from __future__ import annotations

import numpy as np
import torch

from piddm_fem.baselines import BaseMethod
from piddm_fem.edm import heun_sample


class Teacher(BaseMethod):
    can = ("sample",)

    def __init__(self, name, setup, net=None):
        super().__init__(name, setup)
        self.net = setup.teacher if net is None else net
        self.steps = setup.budget.heun_steps
        self.nfe = 2 * self.steps - 1
        self.settings = {"heun_steps": self.steps}

    def sample(self, n: int, seed: int) -> np.ndarray:
        out, noise = [], self.noise(seed, n)
        for start in range(0, n, self.setup.budget.batch):
            eps = noise[start:start + self.setup.budget.batch]
            with torch.no_grad():
                x0, _ = heun_sample(self.net, eps, self.steps)
            out.append(self.to_physical(x0))
        return np.concatenate(out)
