"""The methods of the comparison (``piddm_fem.evaluation``), all on the same teacher network.

One module per family, one class per method; ``METHODS`` maps the ``--methods`` names to them.
Every method keeps its settings (``settings``) and one-off costs (``costs``, e.g. fine-tuning)
for the report, and says what it can do (``can``: "sample" and/or task names).
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from piddm_fem.errors import PiddmError

# name -> (module, class, keyword arguments)
METHODS = {
    "teacher": ("sampling", "Teacher", {}),
    "PIDDM-1": ("piddm", "Student", {"which": "PIDDM", "refine": False}),
    "PIDDM-ref": ("piddm", "Student", {"which": "PIDDM", "refine": True}),
    "lambda=0": ("piddm", "Student", {"which": "lambda=0", "refine": False}),
    "diffusionpde-fd": ("guidance", "Guidance", {"residual": "fd", "observe": True}),
    "diffusionpde-weak": ("guidance", "Guidance", {"residual": "weak", "observe": True}),
    "dps-fd": ("guidance", "Guidance", {"residual": "fd", "observe": False}),
    "dps-weak": ("guidance", "Guidance", {"residual": "weak", "observe": False}),
    "pidm": ("pidm", "PIDM", {}),
    "eci": ("eci", "ECI", {}),
    "direct": ("direct", "Direct", {"init": "teacher"}),
    "direct-mean": ("direct", "Direct", {"init": "mean"}),
    "fno": ("fno", "FNO", {}),
}


class BaseMethod:
    """Defaults of the ``Method`` protocol: nothing can be done until a subclass says so."""

    can: tuple = ()
    nfe: int = 0
    posterior_mean: bool = False  # constrains E[x0|xt] (PIDDM's claim is about these methods)
    deterministic: bool = False  # the same estimate from every noise draw (e.g. the FNO)

    def __init__(self, name: str, setup):
        self.name, self.setup = name, setup
        self.settings, self.costs = {}, {}

    @property
    def masked_tasks(self) -> tuple:
        """Every task of the problem's metadata: what a method that fills any mask can do."""
        return tuple(self.setup.info.meta["tasks"])

    @property
    def task_samples(self) -> int:
        """The samples behind one task estimate: the budget's ``task_samples`` (one when unset) for a
        stochastic method, one for a deterministic one."""
        return 1 if self.deterministic else self.setup.budget.task_samples or 1

    def sample(self, n: int, seed: int) -> np.ndarray:
        from piddm_fem.evaluation import cannot

        raise cannot(self.name, "sample", self.can)

    def task_estimate(self, task, observed, mask, seed) -> np.ndarray:
        """The harness's estimate of every problem: the mean of ``task_samples`` solutions, each
        from its own noise (the Monte Carlo posterior mean; a binary channel is thresholded after)."""
        k = self.task_samples
        if k == 1:
            return self.solve_task(task, observed, mask, seed)
        est = self.solve_task(task, np.repeat(observed, k, 0), np.repeat(mask, k, 0), seed)
        return est.reshape(len(observed), k, *est.shape[1:]).mean(1)

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        from piddm_fem.evaluation import cannot

        raise cannot(self.name, task, self.can)

    # helpers shared by the methods
    def noise(self, seed: int, n: int) -> torch.Tensor:
        """eps for samples (or problems) 0..n-1 of ``seed``: the teacher's and the students' noise."""
        from piddm_fem.edm import noise_for_indices

        return noise_for_indices(seed, np.arange(n), self.setup.shape, device=self.setup.device)

    def to_norm(self, x) -> torch.Tensor:
        """numpy/torch physical fields -> normalised float64 tensor on the setup's device."""
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64, device=self.setup.device)
        return self.setup.normalizer.normalize(x)

    def to_physical(self, z: torch.Tensor) -> np.ndarray:
        return self.setup.normalizer.denormalize(z.detach().double()).cpu().numpy()


def build(names: list[str], setup, tasks=(), strict: bool = True) -> list:
    """Instantiate the methods ``names``; one-line errors for unknown names, for a student method
    without its student, and (``strict``) for a method that can do none of the requested work,
    which is otherwise left out (e.g. the FNO where the forward task is not coefficients -> u)."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise PiddmError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    methods = []
    for name in dict.fromkeys(names):
        module, cls, kwargs = METHODS[name]
        method = getattr(importlib.import_module(f"piddm_fem.baselines.{module}"), cls)(name, setup, **kwargs)
        wanted = ("sample", *tasks)
        if not any(w in method.can for w in wanted):
            if not strict:
                continue
            from piddm_fem.evaluation import cannot

            raise cannot(name, "/".join(tasks) if tasks else "sample", method.can)
        methods.append(method)
    return methods
