"""EDM (Karras et al. 2022): preconditioning, training loss, seeded noise and the Heun ODE sampler.

Everything here works in *normalised* data space (per-channel zero mean, unit std, see
``piddm_fem.data``), hence ``sigma_data = 1``. A denoiser is any callable ``D(x, sigma)`` with
``x`` [B, C, S, S] and ``sigma`` [B] (or a scalar) returning the estimate of the clean sample.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import nn

SIGMA_DATA = 1.0
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
HEUN_STEPS = 18  # EDM's N_s: 2 N_s - 1 = 35 network evaluations


class EDMPrecond(nn.Module):
    """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) around a raw network F(x, c_noise)."""

    def __init__(self, model: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.model = model
        self.sigma_data = float(sigma_data)

    def coefficients(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = 1 / (sd2 + sigma**2).sqrt()
        c_noise = sigma.log() / 4
        return c_skip, c_out, c_in, c_noise

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1)
        sigma = sigma.expand(x.shape[0]) if sigma.numel() == 1 else sigma
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma.reshape(-1, 1, 1, 1))
        F_x = self.model(c_in * x, c_noise.flatten())
        return c_skip * x + c_out * F_x.to(torch.float32)


class EDMLoss:
    """Denoising loss with log-normal sigma and weight (sigma^2 + sigma_d^2) / (sigma sigma_d)^2.

    ``__call__`` returns the per-element weighted squared error [B, C, S, S]."""

    def __init__(self, P_mean: float = -1.2, P_std: float = 1.2, sigma_data: float = SIGMA_DATA):
        self.P_mean, self.P_std, self.sigma_data = P_mean, P_std, sigma_data

    def __call__(self, net, x: torch.Tensor, generator: torch.Generator | None = None):
        shape = (x.shape[0], 1, 1, 1)
        normal = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        sigma = (normal * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        n = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * sigma
        D = net(x + n, sigma.flatten())
        return weight * (D - x) ** 2


SAMPLE_STREAM, PAIR_STREAM, VAL_STREAM, RESAMPLE_STREAM = 0, 1, 2, 3
# noise streams: sampling, distillation pairs, their validation, fresh noise drawn during sampling (ECI)


class RowNoise:
    """Standard normal noise whose row k depends only on (seed, indices[k], stream), whatever the
    batch or the device: one CPU ``torch.Generator`` per index (as EDM's StackedRandomGenerator),
    seeded from ``SeedSequence([seed, index])`` (with ``stream`` appended when it is not
    SAMPLE_STREAM). Each ``draw`` continues every row's generator: a sampler that draws fresh
    noise at each step gets the same draws for a problem in any batch."""

    def __init__(self, seed: int, indices, stream: int = SAMPLE_STREAM):
        self.generators = []
        for k in np.asarray(indices, dtype=np.int64).reshape(-1):
            entropy = [int(seed), int(k)] + ([int(stream)] if stream != SAMPLE_STREAM else [])
            state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)
            self.generators.append(torch.Generator().manual_seed(int(state[0])))

    def draw(self, shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
        """The next [len(indices), *shape] draw."""
        out = [torch.randn(tuple(shape), generator=g, dtype=torch.float64) for g in self.generators]
        eps = torch.stack(out) if out else torch.empty((0, *shape), dtype=torch.float64)
        return eps.to(device=device, dtype=dtype)


def noise_for_indices(seed: int, indices, shape, device="cpu", dtype=torch.float32,
                      stream: int = SAMPLE_STREAM) -> torch.Tensor:
    """Standard normal eps [len(indices), *shape], the first draw of ``RowNoise``. Streams never
    share a row: a student is distilled on PAIR_STREAM and sampled, like every other method, on
    SAMPLE_STREAM, so that it is never evaluated on the noise it was trained on."""
    return RowNoise(seed, indices, stream).draw(shape, device, dtype)


def sigma_steps(num_steps: int = HEUN_STEPS, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX,
                rho: float = RHO) -> torch.Tensor:
    """The N + 1 noise levels of EDM's schedule (float64), sigma_max first and 0 last."""
    i = torch.arange(num_steps, dtype=torch.float64)
    denom = max(num_steps - 1, 1)
    t = (sigma_max ** (1 / rho) + i / denom * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def heun_sample(net, eps: torch.Tensor, num_steps: int = HEUN_STEPS, sigma_min: float = SIGMA_MIN,
                sigma_max: float = SIGMA_MAX, rho: float = RHO) -> tuple[torch.Tensor, int]:
    """Deterministic Heun integration of the probability-flow ODE (EDM Algorithm 1, S_churn = 0).

    Starts at x = sigma_max * eps and returns (x0 in eps's dtype, number of network evaluations),
    which is 2 N - 1: the last step (to sigma = 0) is a plain Euler step. The state is float64."""
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    t_steps = sigma_steps(num_steps, sigma_min, sigma_max, rho).to(eps.device)
    x = eps.to(torch.float64) * t_steps[0]
    nfe = 0
    for t_cur, t_next in itertools.pairwise(t_steps):
        d_cur = (x - net(x, t_cur).to(torch.float64)) / t_cur
        nfe += 1
        x_next = x + (t_next - t_cur) * d_cur
        if t_next > 0:
            d_next = (x_next - net(x_next, t_next).to(torch.float64)) / t_next
            nfe += 1
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_next)
        x = x_next
    return x.to(eps.dtype), nfe
