"""PIDDM students (piddm_fem/student.py): PIDDM-1 (one call), PIDDM-ref (eps refined on the
residual) and the lambda_train = 0 ablation; tasks by masked latent optimisation
(``tasks.infer_masked``, the paper's Algorithm 3)."""

from __future__ import annotations

import numpy as np

from piddm_fem import checkpoint
from piddm_fem.baselines import BaseMethod
from piddm_fem.errors import PiddmError


class Student(BaseMethod):
    def __init__(self, name, setup, which: str, refine: bool):
        from piddm_fem.student import load_student

        super().__init__(name, setup)
        self.can = ("sample", *self.masked_tasks)
        if which not in setup.students:
            flag = "--student" if which == "PIDDM" else "--ablation"
            raise PiddmError(f"method {name} needs a student: pass {flag} DIR (a `piddm distill` run)")
        directory = setup.students[which]
        self.student, self.ckpt, self.normalizer, self.operator = load_student(directory, setup.device)
        b = setup.budget
        self.refine_steps = b.refine_steps if refine else 0
        # tasks: PIDDM-1 is one call per restart (the best fit kept); the others optimise eps
        self.task_steps = b.task_steps if refine or which != "PIDDM" else 0
        self.nfe = self.student.steps * (1 + self.refine_steps)  # a k-step student calls its network k times
        distill = self.ckpt["config"].get("distill", {})
        self.settings = {"lambda_train": distill.get("lambda_train"), "refine_steps": self.refine_steps,
                         "lambda_infer": b.lambda_infer, "task_steps": self.task_steps,
                         "task_norm": setup.task_norm, "task_lambda": setup.task_weight, "restarts": self.task_samples}
        pair, train = self.ckpt.get("pair_seconds"), self.ckpt.get("distill_seconds")
        self.costs = {"pair_seconds": pair, "distill_seconds": train, "student": str(checkpoint.resolve(directory))}
        if pair is not None and train is not None:
            self.costs["amortised_seconds_per_sample_over_1000"] = (pair + train) / 1000

    def sample(self, n: int, seed: int) -> np.ndarray:
        from piddm_fem.student import sample_fields

        b = self.setup.budget
        return sample_fields(self.student, self.ckpt, self.normalizer, self.operator, n, seed,
                             self.refine_steps, b.lambda_infer, b.batch)["fields"]

    @property
    def task_samples(self) -> int:
        """Restarts of Algorithm 3 per problem: the budget's ``task_samples``, else its ``restarts``."""
        b = self.setup.budget
        return b.task_samples or b.restarts

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        from piddm_fem.tasks import infer_masked

        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        r = infer_masked(self.student, self.normalizer, self.operator, observed, mask, steps=self.task_steps,
                         lam=self.setup.task_weight, norm=self.setup.task_norm, restarts=self.task_samples, seed=seed)
        return r["mean"].numpy()

    task_estimate = solve_task  # its restarts are the samples: averaged, or the best fit kept by PIDDM-1
