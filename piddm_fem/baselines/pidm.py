"""PIDM-style training-time physics (Bastek et al. 2025): the teacher fine-tuned with the residual
of E[x0|xt], the denoiser's output at every training noise level, as a Gaussian likelihood added to
the EDM loss, then sampled like the teacher (Heun, N_s steps).

Their code (jhbastek/PhysicsInformedDiffusionModels, `src/denoising_utils.py`) adds
c_residual * 0.5 R^2 / Sigma_t, averaged over the residual tensor, with Sigma_t the posterior
variance of their DDPM (cosine schedule, 100 steps, t = 0 clipped to t = 1). Their residual tensor
holds the equation and two boundary channels, zero off the edges, so its mean is a third of the
mean over nodes: here the weight is c_residual / (6 Sigma(sigma)) on the mean square of the scaled
residual over the nodes, Sigma interpolated in log sigma between their steps' noise levels
(``pidm_variance``). At c_residual = 1e-3 it runs from 1.7e-4 at high noise to 0.41 at low noise.

The fine-tuning reuses the teacher's training loop (``TeacherTrainer`` with ``loss_fn``) from the
teacher's checkpoint, into OUT/pidm (resumable; a finished run is reused while the teacher and the
data are the same, OUT/pidm/source.json)."""

from __future__ import annotations

import json

import numpy as np
import torch

from piddm_fem import checkpoint, schema
from piddm_fem.baselines import BaseMethod
from piddm_fem.baselines.sampling import Teacher
from piddm_fem.edm import EDMLoss
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import write_atomic


def _ddpm_posterior_variance(steps: int = 100, s: float = 0.008):
    """(noise levels sqrt(1 / alpha_bar_t - 1), posterior variances, t = 0 clipped to t = 1) of
    PIDM's DDPM: the cosine schedule with betas clipped at 0.999."""
    x = np.linspace(0, steps, steps + 1)
    f = np.cos((x / steps + s) / (1 + s) * np.pi / 2) ** 2
    betas = np.clip(1 - f[1:] / f[:-1], 0, 0.999)
    alpha_bar = np.cumprod(1 - betas)
    alpha_bar_prev = np.concatenate([[1.0], alpha_bar[:-1]])
    variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
    variance[0] = variance[1]
    return np.sqrt(1 / alpha_bar - 1), variance


_LOG_TABLES = {}  # device -> (log noise levels, log variances), copied there once


def pidm_variance(sigma: torch.Tensor) -> torch.Tensor:
    """PIDM's residual variance Sigma at EDM noise levels ``sigma``: its DDPM posterior variance,
    interpolated linearly in (log sigma, log Sigma) between its steps and held beyond them. On the
    device, without a host synchronisation after the first call there."""
    if sigma.device not in _LOG_TABLES:
        _LOG_TABLES[sigma.device] = tuple(torch.from_numpy(np.log(v)).to(sigma.device)
                                          for v in _ddpm_posterior_variance())
    log_s, log_v = _LOG_TABLES[sigma.device]
    z = sigma.double().log().clamp(log_s[0], log_s[-1])
    i = torch.searchsorted(log_s, z).clamp(1, len(log_s) - 1)
    w = (z - log_s[i - 1]) / (log_s[i] - log_s[i - 1])
    return (log_v[i - 1] + w * (log_v[i] - log_v[i - 1])).exp()


class PIDMLoss:
    """EDM's per-element loss plus lambda / (6 Sigma(sigma)) times the mean square residual of
    denorm(D) per sample (broadcast, so the mean over elements adds the batch mean; the module
    docstring says where the weight comes from)."""

    def __init__(self, operator, normalizer, lam: float):
        self.operator, self.normalizer, self.lam = operator, normalizer, lam
        self.edm = EDMLoss()

    def __call__(self, net, x, generator=None):
        outputs = []

        def recorded(noisy, sigma):
            outputs.append((net(noisy, sigma), sigma))
            return outputs[-1][0]

        loss = self.edm(recorded, x, generator=generator)
        denoised, sigma = outputs[0]
        physics = self.operator.loss(self.normalizer.denormalize(denoised.double()))
        weight = self.lam / (6 * pidm_variance(sigma))
        return loss + (weight * physics).to(loss.dtype).reshape(-1, 1, 1, 1)


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
