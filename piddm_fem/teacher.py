"""The diffusion teacher: EDM training on a dataset file and Heun ODE sampling in physical units.

``train_teacher`` runs on one device, or on several under ``torchrun`` (DDP: nccl on CUDA, gloo
on CPU; ``batch`` is the global batch, split evenly over the ranks). It writes OUT/last.pt at
every validation and at the end (also on Ctrl-C) and OUT/best.pt whenever the EMA network's
validation loss improves. ``load_teacher`` returns the EMA denoiser in normalised space, which is
what ``sample_teacher`` and the distillation pair bank integrate.
"""

from __future__ import annotations

import copy
import warnings
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from piddm_fem import checkpoint, checks, schema
from piddm_fem.data import (DEFAULT_FRACTIONS, FieldDataset, InfiniteSampler, Normalizer,
                            compute_normalizer, open_dataset)
from piddm_fem.edm import HEUN_STEPS, SAMPLE_STREAM, SIGMA_DATA, EDMLoss, EDMPrecond, heun_sample, noise_for_indices
from piddm_fem.errors import PiddmError
from piddm_fem.interrupt import deferred
from piddm_fem.progress import progress_bar
from piddm_fem.unet import UNet, UNetConfig, padding_for, preset

ARCHITECTURE = ("size", "padding", "embedding")
LOG_EVERY = 25  # steps between reads of the loss on the host (each one waits for the GPU)
RANGES = {"batch": ("--batch", "[1, inf)"), "lr": ("--lr", "(0, inf)"), "warmup": ("--warmup", "[0, inf)"),
          "val_every": ("--val-every", "[1, inf)"), "val_samples": ("val_samples", "[1, inf)"),
          "workers": ("--workers", "[0, inf)")}


@dataclass
class TrainConfig:
    """Training settings, stored in the checkpoint; ``--resume`` reuses them unless overridden."""

    size: str = "tiny"
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    val_every: int = 500
    val_samples: int = 256
    seed: int = 0
    split_seed: int = 0
    fractions: tuple = DEFAULT_FRACTIONS
    padding: str = "auto"
    embedding: str = "positional"
    workers: int = 0
    compile: bool = False               # torch.compile the network (eager if compilation fails)
    channels_last: bool | None = None   # None: teacher.memory_format's choice (on; CUDA trains in bf16)
    fused: bool | None = None           # fused AdamW; None: on for CUDA
    resident: bool = True               # keep a split that fits in memory on the device


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """auto -> cuda:<local_rank> when CUDA is available, else cpu."""
    if name not in ("auto", "cpu", "cuda"):
        raise PiddmError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise PiddmError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


@contextmanager
def distributed(device: str = "auto"):
    """Yield (rank, world, device); joins a process group when torchrun set WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1, resolve_device(device)
        return
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        yield rank, world, dev
    finally:
        if owner:
            dist.destroy_process_group()


def memory_format(channels_last: bool | None, device=None, bf16: bool = False) -> torch.memory_format:
    """The network's weight layout (the U-Net runs its input in it, ``UNet.forward``). True or
    False is obeyed. None, the default, is channels_last (faster on the CPU: 1.2x at S = 33 and 2x
    at S = 64, `tiny`, 2 threads), except for float32 on CUDA (``bf16`` False, e.g. the student and
    every sampler): there F.group_norm makes a channels-last input contiguous (PyTorch keeps the
    layout on the CPU only) and the next convolution converts it back, two copies of the activation
    per norm; on the H200 the fp32 student with channels_last ran at 0.82x of the plain, contiguous
    path (which also read its loss every step). The teacher's bf16 training on CUDA keeps
    channels_last (tensor-core convolutions; torch.compile fuses the norms)."""
    if channels_last is None:
        channels_last = bf16 or torch.device(device or "cpu").type != "cuda"
    return torch.channels_last if channels_last else torch.contiguous_format


def compiled(module):
    """``torch.compile(module)``, falling back to ``module`` itself (with a warning) when the
    first call fails to compile, e.g. without a C compiler or on an unsupported platform."""
    fast = torch.compile(module)
    state = {"call": fast}

    def call(*args, **kwargs):
        try:
            return state["call"](*args, **kwargs)
        except Exception as exc:  # noqa: BLE001  (torch._dynamo raises many kinds)
            if state["call"] is module:
                raise
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
                          "training eagerly")
            state["call"] = module
            return module(*args, **kwargs)

    return call


@torch.no_grad()
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, decay: float, step: int) -> None:
    """ema <- decay ema + (1 - decay) net, one fused call; the decay is warmed up as
    (1 + step) / (10 + step) so that early steps are not averaged with the initial weights."""
    decay = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1 - decay)


def build_network(ckpt_config: dict, device="cpu") -> EDMPrecond:
    """The preconditioned U-Net described by a checkpoint's ``config`` (untrained weights) on
    ``device``, in the default float32 layout there (``memory_format``). Its random draws leave the
    caller's random state as it was."""
    with torch.random.fork_rng(devices=[]):
        net = EDMPrecond(UNet(UNetConfig.from_dict(ckpt_config["net"])), ckpt_config["sigma_data"])
    return net.to(device, memory_format=memory_format(None, device))


def _resolve_config(ckpt: dict | None, settings: dict) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(settings) - known
    if unknown:
        raise TypeError(f"unknown training settings {sorted(unknown)}")
    if ckpt is None:
        cfg = TrainConfig(**settings)
        checks.check_options(cfg, RANGES)
        return cfg
    cfg = TrainConfig(**{**ckpt["config"]["train"], "fractions": tuple(ckpt["config"]["train"]["fractions"])})
    for key in ARCHITECTURE + ("fractions", "split_seed"):
        if key in settings and settings[key] != getattr(cfg, key):
            raise PiddmError(f"--resume: {key}={settings[key]!r} differs from the checkpoint's "
                             f"{getattr(cfg, key)!r}; drop the option or train into a new --out")
    cfg = replace(cfg, **settings)
    checks.check_options(cfg, RANGES)
    return cfg


class TeacherTrainer:
    """State of one training run on one rank: network, EMA, optimizer, data and step."""

    def __init__(self, data_path, out_dir, settings: dict, device: torch.device,
                 resume: bool = False, rank: int = 0, world: int = 1, loss_fn=None):
        """``loss_fn(net, x, generator)`` -> per-element loss replaces the EDM loss (e.g. PIDM's
        residual term, piddm_fem/baselines/pidm.py); it is not stored in the checkpoint."""
        self.data_path, self.out_dir = Path(data_path), Path(out_dir)
        self.device, self.rank, self.world = device, rank, world
        last = self.out_dir / checkpoint.LAST
        if resume and not last.exists():
            raise PiddmError(f"nothing to resume: {last} does not exist; drop --resume to start afresh")
        if not resume and last.exists():
            raise PiddmError(f"{last} exists; pass --resume to continue it or choose another --out")
        ckpt = checkpoint.load(last, kind="teacher") if resume else None
        self.cfg = _resolve_config(ckpt, settings)
        checks.output_dir(self.out_dir)
        if self.cfg.batch % world:
            raise PiddmError(f"--batch {self.cfg.batch} is not divisible by {world} processes; "
                             "pick a multiple of the process count")
        self.info, splits = open_dataset(data_path, self.cfg.fractions, self.cfg.split_seed)
        if ckpt is not None:
            checkpoint.check_compatible(ckpt, self.info, data_path)
            self.normalizer = Normalizer.from_dict(ckpt["normalization"])
            self.net_cfg = UNetConfig.from_dict(ckpt["config"]["net"])
        else:
            self.normalizer = compute_normalizer(data_path, splits["train"])
            padding = padding_for(self.info.boundary, self.cfg.padding)
            self.net_cfg = replace(preset(self.cfg.size, len(self.info.channels), padding),
                                   embedding=self.cfg.embedding)

        self.loss_fn = loss_fn or EDMLoss()
        self.bf16 = device.type == "cuda"  # autocast of the training and validation steps
        layout = memory_format(self.cfg.channels_last, device, bf16=self.bf16)
        with torch.random.fork_rng(devices=[]):  # the initial weights (drawn on the CPU) depend on the
            torch.random.default_generator.manual_seed(self.cfg.seed)  # seed alone; the caller's state is kept
            net = EDMPrecond(UNet(self.net_cfg), SIGMA_DATA)
        self.net = net.to(device, memory_format=layout)
        self.ema = copy.deepcopy(self.net).eval().requires_grad_(False)
        fused = self.cfg.fused if self.cfg.fused is not None else device.type == "cuda"
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                     fused=fused)
        self.step, self.best_val = 0, float("inf")
        self.train_seconds, self._run_start = float((ckpt or {}).get("train_seconds", 0.0)), None
        if ckpt is not None:
            self.net.load_state_dict(ckpt["model"])
            self.ema.load_state_dict(ckpt["ema"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.step, self.best_val = int(ckpt["step"]), float(ckpt["best_val"])
        self.model = self.net
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.net, device_ids=ids)
        if self.cfg.compile:
            self.model = compiled(self.model)

        self.per_rank = self.cfg.batch // world
        self.train = FieldDataset(data_path, splits["train"], self.normalizer)
        self.sampler = InfiniteSampler(len(self.train), rank, world, self.cfg.seed, start=self.step * self.per_rank)
        self.val = FieldDataset(data_path, splits["val"][: self.cfg.val_samples], self.normalizer)
        self.gen = torch.Generator(device)

    def checkpoint_dict(self) -> dict:
        return {
            "kind": "teacher",
            "problem": self.info.problem,
            "resolution": self.info.resolution,
            "channels": list(self.info.channels),
            "params": self.info.params,
            "boundary": list(self.info.boundary),
            "meta": self.info.meta,
            "normalization": self.normalizer.to_dict(),
            "config": {"net": self.net_cfg.to_dict(), "train": asdict(self.cfg),
                       "sigma_data": self.net.sigma_data, "data": str(self.data_path)},
            "model": self.net.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "best_val": self.best_val,
            "train_seconds": self.train_seconds + (0.0 if self._run_start is None
                                                   else time.perf_counter() - self._run_start),
        }

    def save(self, name: str = checkpoint.LAST) -> Path:
        path = self.out_dir / name
        checkpoint.save(path, self.checkpoint_dict())
        return path

    def batches(self):
        """Endless normalised training batches in the sampler's order. A split that fits in
        memory (``FieldDataset``'s cache) is moved to the device once and indexed there, with no
        DataLoader and no host-device copy per step; otherwise a DataLoader reads it."""
        cache = self.train.cached() if self.cfg.workers == 0 and self.cfg.resident else None
        if cache is None:
            loader = torch.utils.data.DataLoader(
                self.train, batch_size=self.per_rank, sampler=self.sampler, num_workers=self.cfg.workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.cfg.workers > 0)
            yield from loader
            return
        cache = cache.to(self.device)
        order = iter(self.sampler)
        while True:
            idx = torch.tensor([next(order) for _ in range(self.per_rank)], device=self.device)
            yield cache[idx]

    def train_step(self, x: torch.Tensor) -> torch.Tensor:
        """One optimizer step on the normalised batch ``x``; returns its loss (a device scalar:
        reading it would wait for the GPU, so callers do that only when they log)."""
        x = x.to(self.device, non_blocking=True)
        # Loss noise seeded per (seed, rank, step): a resumed run repeats an uninterrupted one.
        seed = np.random.SeedSequence([self.cfg.seed, self.rank, self.step]).generate_state(1, np.uint64)
        self.gen.manual_seed(int(seed[0]))
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * min(1.0, (self.step + 1) / max(self.cfg.warmup, 1))
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn(self.model, x, generator=self.gen).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.cfg.grad_clip)
        with deferred():  # Ctrl-C waits for the update, its count and the EMA: a resume repeats no step
            self.opt.step()
            self.step += 1
            update_ema(self.ema, self.net, self.cfg.ema_decay, self.step)
        return loss.detach()

    @torch.no_grad()
    def validate(self, batch: int = 64) -> float | None:
        """EDM loss of the EMA network on the validation split with fixed noise (comparable
        between evaluations); None when the split is empty."""
        if len(self.val) == 0:
            return None
        gen = torch.Generator(self.device).manual_seed(12345)
        loader = torch.utils.data.DataLoader(self.val, batch_size=batch)
        total = 0.0
        for x in loader:
            x = x.to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                total += float(self.loss_fn(self.ema, x, generator=gen).mean(dim=(1, 2, 3)).sum())
        return total / len(self.val)

    def _checkpoint_round(self) -> float | None:
        """Validate and write last.pt (and best.pt on improvement); rank 0 only."""
        val = self.validate()
        if val is not None and val < self.best_val:
            self.best_val = val
            self.save(checkpoint.BEST)
        self.save(checkpoint.LAST)
        return val

    def run(self, steps: int, progress: bool = True) -> dict:
        """Train until ``self.step == steps``; Ctrl-C saves last.pt and returns. The network's own
        random draws (dropout) come from the global generators, seeded from (seed, rank, first
        step) for the run and restored afterwards: the caller's random state is left as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = int(np.random.SeedSequence([self.cfg.seed, self.rank, self.step, 1]).generate_state(1, np.uint64)[0])
            torch.random.default_generator.manual_seed(seed)
            if devices:
                torch.cuda.manual_seed(seed)
            return self._run(steps, progress)

    def _run(self, steps: int, progress: bool) -> dict:
        lead = self.rank == 0
        start_step, t0 = self.step, time.perf_counter()
        self._run_start = t0
        loss_avg, val, interrupted, status = None, None, False, ""
        batches = self.batches()
        try:
            with progress_bar(disable=not (progress and lead)) as bar:
                task = bar.add_task("teacher", total=steps, completed=self.step, status="")
                while self.step < steps:
                    loss = self.train_step(next(batches))
                    loss_avg = loss if loss_avg is None else 0.95 * loss_avg + 0.05 * loss  # on the device
                    validated = lead and (self.step % self.cfg.val_every == 0 or self.step == steps)
                    if validated:
                        val = self._checkpoint_round()
                    if validated or self.step % LOG_EVERY == 0:  # the only host reads of the loss
                        rate = (self.step - start_step) / (time.perf_counter() - t0)
                        status = f"loss={float(loss_avg):.4f}" + ("" if val is None else f" val={val:.4f}")
                        status += f" {rate:.2f} it/s"
                    bar.update(task, completed=self.step, status=status)
                    if validated and progress:  # one line per validation, also in log files
                        bar.console.print(f"step {self.step}: {status}")
        except KeyboardInterrupt:
            interrupted = True
            if lead:
                self.save(checkpoint.LAST)
        self.train_seconds += time.perf_counter() - t0
        self._run_start = None
        return {"step": self.step, "loss": None if loss_avg is None else float(loss_avg), "val": val,
                "best_val": self.best_val,
                "seconds": time.perf_counter() - t0, "interrupted": interrupted,
                "out": str(self.out_dir), "rank": self.rank}


def train_teacher(data_path, out_dir, steps: int, batch: int | None = None, size: str | None = None,
                  device: str = "auto", resume: bool = False, *, progress: bool = True,
                  **settings) -> dict:
    """Train (or with ``resume`` continue) a teacher until step ``steps``; returns run stats.

    ``settings`` are ``TrainConfig`` fields (lr, val_every, ...); None means the default, or the
    checkpoint's value when resuming. Architecture fields cannot change on resume."""
    if steps < 1:
        raise PiddmError(f"--steps {steps} must be >= 1")
    given = {k: v for k, v in dict(settings, batch=batch, size=size).items() if v is not None}
    with distributed(device) as (rank, world, dev):
        trainer = TeacherTrainer(data_path, out_dir, given, dev, resume=resume, rank=rank, world=world)
        checks.steps_reach(steps, trainer.step)
        return trainer.run(steps, progress=progress)


def load_teacher(ckpt_or_dir, device="cpu") -> tuple[EDMPrecond, dict]:
    """(EMA denoiser in normalised space, eval mode, no grad; checkpoint dict)."""
    ckpt = checkpoint.load(ckpt_or_dir, kind="teacher")
    net = build_network(ckpt["config"], device)
    net.load_state_dict(ckpt["ema"])
    return net.eval().requires_grad_(False), ckpt


def dataset_splits(ckpt: dict, data_path):
    """(info, {split: file indices}) of ``data_path`` split as the checkpoint's training run did;
    raises unless the dataset matches the checkpoint's problem, grid and channels."""
    train = ckpt["config"]["train"]
    info, splits = open_dataset(data_path, train["fractions"], train["split_seed"])
    checkpoint.check_compatible(ckpt, info, data_path)
    return info, splits


def teacher_pairs(net, ckpt: dict, seed: int, indices, num_steps: int = HEUN_STEPS, stream: int = SAMPLE_STREAM):
    """(eps, x0, nfe) in normalised space for noise indices ``indices`` of ``stream``: x0 = Heun
    ODE of eps."""
    device = next(net.parameters()).device
    shape = (len(ckpt["channels"]), ckpt["resolution"], ckpt["resolution"])
    eps = noise_for_indices(seed, indices, shape, device=device, stream=stream)
    x0, nfe = heun_sample(net, eps, num_steps)
    return eps, x0, nfe


def sample_teacher(ckpt_path, n: int, num_steps: int = HEUN_STEPS, seed: int = 0, out_path=None,
                   device: str = "auto", batch: int = 64, overwrite: bool = False,
                   progress: bool = True) -> dict:
    """Draw ``n`` samples (noise indices 0..n-1 of ``seed``), de-normalise them and, if
    ``out_path`` is given, write them in the dataset schema with source="teacher"."""
    if n < 1 or num_steps < 1 or batch < 1:
        raise PiddmError(f"--n {n}, --steps {num_steps} and batch {batch} must all be >= 1")
    if out_path is not None:
        schema.check_output(out_path, overwrite)
    dev = resolve_device(device)
    net, ckpt = load_teacher(ckpt_path, dev)
    normalizer = Normalizer.from_dict(ckpt["normalization"])
    out = np.empty((n, len(ckpt["channels"]), ckpt["resolution"], ckpt["resolution"]))
    t0 = time.perf_counter()
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("sample", total=n, status="")
        for start in range(0, n, batch):
            idx = np.arange(start, min(n, start + batch))
            _, x0, nfe = teacher_pairs(net, ckpt, seed, idx, num_steps)
            out[idx] = normalizer.denormalize(x0.double()).cpu().numpy()
            rate = (idx[-1] + 1) / (time.perf_counter() - t0)
            bar.update(task, completed=idx[-1] + 1, status=f"{rate:.2f} samples/s")
    seconds = time.perf_counter() - t0
    stats = {"n": n, "num_steps": num_steps, "nfe": nfe, "seconds": seconds,
             "seconds_per_sample": seconds / n, "device": str(dev), "out": out_path}
    if out_path is not None:
        info = checkpoint.dataset_info(
            ckpt, n, seed, "teacher", {"sampler": "edm_heun", "num_steps": num_steps, "nfe": nfe,
                                       "checkpoint": str(checkpoint.resolve(ckpt_path)), "step": ckpt["step"]})
        schema.write(out_path, info, out, overwrite=overwrite)
    return stats
