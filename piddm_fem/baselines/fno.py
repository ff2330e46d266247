"""A dedicated forward surrogate: a Fourier neural operator (Li et al. 2021) from the coefficient
channels to the unknown, trained on the teacher's training split for a wall-clock budget.

Written here in plain torch (spectral convolutions on ``torch.fft.rfft2``) rather than taken from
the ``neuraloperator`` package: the project's dependencies are torch, numpy, scipy, typer, rich
and pytest on the learning side."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from piddm_fem.baselines import BaseMethod


class SpectralConv2d(nn.Module):
    """Multiply the lowest ``modes`` Fourier modes (both signs of the first frequency) by learned
    complex weights; drop the rest."""

    def __init__(self, width: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        self.w_pos = nn.Parameter(scale * torch.randn(width, width, modes, modes, dtype=torch.cfloat))
        self.w_neg = nn.Parameter(scale * torch.randn(width, width, modes, modes, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        m1, m2 = min(self.modes, H // 2), min(self.modes, W // 2 + 1)
        xf = torch.fft.rfft2(x)
        out = torch.zeros(B, self.w_pos.shape[1], H, W // 2 + 1, dtype=torch.cfloat, device=x.device)
        out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", xf[:, :, :m1, :m2], self.w_pos[:, :, :m1, :m2])
        out[:, :, -m1:, :m2] = torch.einsum("bixy,ioxy->boxy", xf[:, :, -m1:, :m2], self.w_neg[:, :, :m1, :m2])
        return torch.fft.irfft2(out, s=(H, W))


class FNO2d(nn.Module):
    """Lift (inputs + grid coordinates) -> ``layers`` x (spectral conv + 1x1 conv, GELU) -> project."""

    def __init__(self, in_channels: int, out_channels: int, modes: int = 8, width: int = 24, layers: int = 4):
        super().__init__()
        self.lift = nn.Conv2d(in_channels + 2, width, 1)
        self.spectral = nn.ModuleList(SpectralConv2d(width, modes) for _ in range(layers))
        self.pointwise = nn.ModuleList(nn.Conv2d(width, width, 1) for _ in range(layers))
        self.project = nn.Sequential(nn.Conv2d(width, 4 * width, 1), nn.GELU(), nn.Conv2d(4 * width, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        gy, gx = torch.meshgrid(torch.linspace(0, 1, H, device=x.device), torch.linspace(0, 1, W, device=x.device),
                                indexing="ij")
        h = self.lift(torch.cat([x, gx.expand(B, 1, H, W), gy.expand(B, 1, H, W)], 1))
        for k, (spec, point) in enumerate(zip(self.spectral, self.pointwise)):
            h = spec(h) + point(h)
            if k < len(self.spectral) - 1:
                h = nn.functional.gelu(h)
        return self.project(h)


def train_fno(model: FNO2d, inputs: torch.Tensor, targets: torch.Tensor, seconds: float, batch: int = 16,
              lr: float = 1e-3, seed: int = 0, max_steps: int | None = None) -> dict:
    """Adam on the mean-square error until ``seconds`` of training have passed (the clock starts
    after the first step, so start-up is not counted) or ``max_steps`` steps; at least one step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps, t0 = 0, None
    while t0 is None or (time.perf_counter() - t0 < seconds and (max_steps is None or steps < max_steps)):
        idx = torch.randint(len(inputs), (min(batch, len(inputs)),), generator=gen)
        loss = (model(inputs[idx]) - targets[idx]).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
        if t0 is None:
            t0 = time.perf_counter()
    return {"steps": steps, "seconds": time.perf_counter() - t0, "loss": float(loss.detach())}


class FNO(BaseMethod):
    nfe = 1
    deterministic = True

    def __init__(self, name, setup):
        super().__init__(name, setup)
        b = setup.budget
        unknown = setup.operator.unknown
        self.inputs = [c for c in range(len(setup.channels)) if c != unknown]
        self.unknown = unknown
        forward = setup.info.meta["tasks"].get("forward", {}).get("observe", {})
        if not self.inputs or forward != {setup.channels[c]: "all" for c in self.inputs}:
            return  # a map from whole coefficient channels to the unknown: not this problem's forward task
        self.can = ("forward",)
        self.model = None  # trained on first use: a resumed comparison whose rows are saved skips it
        self.settings = {"modes": b.fno_modes, "width": b.fno_width, "layers": 4, "train_seconds": b.fno_seconds,
                         "n_train": int(setup.splits["train"].size)}

    def _trained(self) -> FNO2d:
        if self.model is None:
            from piddm_fem import schema

            b, setup = self.setup.budget, self.setup
            _, train, _ = schema.read(setup.data, setup.splits["train"])
            z = self.to_norm(train).float()
            with torch.random.fork_rng(devices=[]):  # seeded initialisation, the global RNG left alone
                torch.manual_seed(0)
                model = FNO2d(len(self.inputs), 1, b.fno_modes, b.fno_width).to(setup.device)
            self.costs = train_fno(model, z[:, self.inputs], z[:, [self.unknown]], b.fno_seconds)
            self.model = model.eval()
        return self.model

    def solve_task(self, task, observed, mask, seed) -> np.ndarray:
        if task not in self.can:
            return super().solve_task(task, observed, mask, seed)
        model = self._trained()
        z = self.to_norm(observed)
        with torch.no_grad():
            z[:, [self.unknown]] = model(z[:, self.inputs].float()).double()
        return self.to_physical(z)
