"""PIDM-style training-time physics (Bastek et al. 2025): the teacher fine-tuned with
lambda ||R(E[x0|xt])||^2 added to the EDM loss, E[x0|xt] being the denoiser's output at every
training noise level, then sampled like the teacher (Heun, N_s steps).

The fine-tuning reuses the teacher's training loop (``TeacherTrainer`` with ``loss_fn``) from the
teacher's checkpoint, into OUT/pidm (resumable; a finished run is reused while the teacher and the
data are the same, OUT/pidm/source.json)."""

from __future__ import annotations

import json

import numpy as np

from piddm_fem import checkpoint, schema
from piddm_fem.baselines import BaseMethod
from piddm_fem.baselines.sampling import Teacher
from piddm_fem.edm import EDMLoss
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic


class PIDMLoss:
    """EDM's per-element loss plus lambda ||R(denorm(D))||^2 per sample (broadcast, so the mean
    over elements adds lambda times the batch mean of the residual loss)."""

    def __init__(self, operator, normalizer, lam: float):
        self.operator, self.normalizer, self.lam = operator, normalizer, lam
        self.edm = EDMLoss()

    def __call__(self, net, x, generator=None):
        outputs = []

        def recorded(noisy, sigma):
            outputs.append(net(noisy, sigma))
            return outputs[-1]

        loss = self.edm(recorded, x, generator=generator)
        physics = self.operator.loss(self.normalizer.denormalize(outputs[0].double()))
        return loss + self.lam * physics.to(loss.dtype).reshape(-1, 1, 1, 1)


FINETUNE_LR = 2e-4


def finetune(setup, out_dir, steps: int, lam: float, lr: float = FINETUNE_LR, ema_decay: float = 0.99,
             progress: bool = False) -> dict:
    """Fine-tune the teacher ``steps`` more steps with the PIDM loss into ``out_dir`` (AdamW at
    ``lr`` without warm-up; an EMA short enough to follow the fine-tuning)."""
    from piddm_fem.teacher import TeacherTrainer

    start = int(setup.teacher_ckpt["step"])
    last, source = out_dir / checkpoint.LAST, out_dir / "source.json"
    made_from = {"teacher": setup.teacher_ckpt["checksum"], "data": schema.digest(setup.data)}
    if not last.exists() or not source.exists() or json.loads(source.read_text()) != made_from:
        checkpoint.save(last, checkpoint.load(setup.teacher_dir, kind="teacher"))  # (again) from this teacher
        write_atomic(source, json.dumps(made_from))
    settings = {"lr": lr, "warmup": 0, "ema_decay": ema_decay, "val_every": max(1, steps)}
    trainer = TeacherTrainer(setup.data, out_dir, settings, setup.device, resume=True,
                             loss_fn=PIDMLoss(setup.operator, setup.normalizer, lam))
    stats = trainer.run(start + steps, progress=progress)
    if stats["interrupted"]:
        raise KeyboardInterrupt
    # the training time recorded in the checkpoint, so that a reused or resumed run reports the
    # fine-tuning's time, not the time of this call
    recorded = float(checkpoint.load(last)["train_seconds"])
    return {"seconds": recorded - float(setup.teacher_ckpt.get("train_seconds", 0.0)), "steps": steps}


class PIDM(BaseMethod):
    can = ("sample",)
    posterior_mean = True

    def __init__(self, name, setup):
        from piddm_fem.teacher import load_teacher

        super().__init__(name, setup)
        b = setup.budget
        if setup.out_dir is None:
            raise PiddmError(f"method {name} fine-tunes the teacher into OUT/pidm; give an output directory")
        out_dir = setup.out_dir / "pidm"
        self.costs = finetune(setup, out_dir, b.pidm_steps, b.pidm_lambda)
        net, _ = load_teacher(out_dir / checkpoint.LAST, setup.device)
        self.sampler = Teacher(name, setup, net=net)
        self.nfe = self.sampler.nfe
        self.settings = {"finetune_steps": b.pidm_steps, "lambda": b.pidm_lambda, "lr": FINETUNE_LR,
                         "heun_steps": b.heun_steps}

    def sample(self, n: int, seed: int) -> np.ndarray:
        return self.sampler.sample(n, seed)
