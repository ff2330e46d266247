"""Time per sample of the teacher's Heun sampler for N_s in {8, 18, 40} at batch 64.

    python benchmarks/teacher_sampling.py [CKPT] [--size tiny|small|base --res 33] [--batch 64]
        [--variants]

``--variants`` adds the pair bank's question (N_s = 18): the time per sample in each weight layout
(channels_last, the default, and contiguous), in fp32 and under bf16 autocast, at batch B and 4B.

With CKPT (a teacher checkpoint or training directory) the trained EMA network is timed, otherwise
a freshly initialised network of ``--size`` on a 2-channel ``--res`` grid (the cost does not
depend on the weights). Runs on the CPU and, when present, on CUDA. Not a test: numbers depend on
the machine, so later issues compare the student against this script's output on the same one.
"""

from __future__ import annotations

import argparse
import time

import torch

from piddm_fem.checks import check_range
from piddm_fem.edm import HEUN_STEPS, SIGMA_MAX, EDMPrecond, heun_sample, noise_for_indices
from piddm_fem.errors import script_main
from piddm_fem.teacher import load_teacher, memory_format
from piddm_fem.unet import UNet, preset


def network(args, device):
    """(net, (C, S, S), description) on ``device``."""
    if args.ckpt:
        net, ckpt = load_teacher(args.ckpt, device)
        S = ckpt["resolution"]
        return net, (len(ckpt["channels"]), S, S), f"{args.ckpt} ({ckpt['problem']}, step {ckpt['step']})"
    net = EDMPrecond(UNet(preset(args.size, 2))).to(device, memory_format=memory_format(None, device))
    net = net.eval().requires_grad_(False)  # the layout every trained network runs in
    return net, (2, args.res, args.res), f"fresh {args.size} net"


def variants(net, shape, device, batch: int, num_steps: int = HEUN_STEPS) -> None:
    """ms/sample of ``heun_sample`` for each layout x precision x batch (on copies of ``net``)."""
    import contextlib
    import copy

    print(f"N_s = {num_steps}: layout, precision, batch -> ms/sample")
    for layout in (torch.channels_last, torch.contiguous_format):
        copy_ = copy.deepcopy(net).to(memory_format=layout)
        for bf16 in (False, True):
            for b in (batch, 4 * batch):
                eps = noise_for_indices(0, range(b), shape, device=device)
                ctx = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                with ctx:
                    heun_sample(copy_, eps, num_steps=2)  # warm-up
                    sync(device)
                    t0 = time.perf_counter()
                    heun_sample(copy_, eps, num_steps=num_steps)
                    sync(device)
                name = "channels_last" if layout is torch.channels_last else "contiguous"
                print(f"  {name:14s} {'bf16' if bf16 else 'fp32':5s} {b:5d} {(time.perf_counter() - t0) / b * 1e3:9.3f}",
                      flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt", nargs="?", help="teacher checkpoint or directory")
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "base"])
    parser.add_argument("--res", type=int, default=33, help="grid size S of a fresh net")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 18, 40])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cpu and/or cuda")
    parser.add_argument("--variants", action="store_true", help="also layouts x fp32/bf16 x batch at N_s = 18")
    args = parser.parse_args()
    check_range("--batch", args.batch, "[1, inf)")

    devices = [torch.device(d) for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    for device in devices:
        net, shape, what = network(args, device)
        params = sum(p.numel() for p in net.parameters()) / 1e6
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        print(f"{device.type}{threads}: {what}, {params:.2f}M parameters, grid {shape}, batch {args.batch}")
        eps = noise_for_indices(0, range(args.batch), shape, device=device)
        heun_sample(net, eps, num_steps=2)  # warm-up (allocator, kernels)
        print(f"{'N_s':>5} {'NFE':>5} {'s/batch':>9} {'ms/sample':>10} {'samples/s':>10}")
        sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():  # the one-step student: the same network, evaluated once at sigma_max
            net(eps * SIGMA_MAX, SIGMA_MAX)
        sync(device)
        one_step = time.perf_counter() - t0
        print(f"{'1-step student':>15} {one_step / args.batch * 1e3:>10.2f} ms/sample")
        for n_steps in args.steps:
            sync(device)
            t0 = time.perf_counter()
            _, nfe = heun_sample(net, eps, num_steps=n_steps)
            sync(device)
            dt = time.perf_counter() - t0
            print(f"{n_steps:>5} {nfe:>5} {dt:>9.3f} {dt / args.batch * 1e3:>10.2f} {args.batch / dt:>10.1f}"
                  f"   student speed-up {dt / one_step:6.1f}x")
        if args.variants:
            variants(net, shape, device, args.batch)


if __name__ == "__main__":
    script_main(main)
