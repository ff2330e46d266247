"""Training throughput of the teacher and the student: it/s and samples/s per network size, the
plain path beside the fast path and each option alone, in one run on one device (issue 11).

Variants: "plain" = DataLoader batches, contiguous layout, unfused optimizer, no compile, the loss
read on the host every step (as before issue 11); "eager" = every option on but compile; "fast" =
eager plus torch.compile (with --compile; compiled once, which is most of a short run's cost);
"eager - X" drops one option; on CUDA "eager + autotune" adds cuDNN's algorithm search. Each row
is printed (and added to --json) as soon as it is measured, so that a run cut by a time limit
keeps the rows it finished. On CUDA, bf16 autocast (the trainer's), and the achieved TFLOP/s from
torch.utils.flop_counter against the GPU's dense bf16 peak. torch only: the data file (with its
residual operator, for the student) is generated beforehand with Firedrake and carried along.

    python benchmarks/train_throughput.py --data darcy64.h5 [--sizes tiny small] [--batch 64]
        [--steps 60] [--warmup 15] [--compile] [--json out.json] [--profile] [--variants plain eager ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from piddm_fem.errors import script_main
from piddm_fem.interrupt import write_atomic
from piddm_fem.student import Distiller
from piddm_fem.teacher import TeacherTrainer, resolve_device, train_teacher

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM parts, vendor figures
OPTIONS = ("resident", "channels_last", "fused", "compile", "no_sync")
# not (yet) an option of the trainers: cuDNN's algorithm search per shape (torch.backends.cudnn.benchmark),
# timed here as "eager + autotune" on CUDA to see whether it is worth one


def settings(variant: dict) -> dict:
    return {"resident": variant["resident"], "channels_last": variant["channels_last"],
            "fused": variant["fused"], "compile": variant["compile"]}


def timed(step, sync_each: bool, steps: int, warmup: int, device, autotune: bool = False) -> float:
    """it/s of ``step()`` after ``warmup`` steps (compilation and caches warm); with ``autotune``,
    under torch.backends.cudnn.benchmark (restored afterwards)."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = autotune
    try:
        return _timed(step, sync_each, steps, warmup, device)
    finally:
        torch.backends.cudnn.benchmark = before


def _timed(step, sync_each: bool, steps: int, warmup: int, device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
        if sync_each:
            float(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def step_flops(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def profile(step, device, label: str, steps: int = 5, rows: int = 15) -> None:
    """Print the ops that take the most (device, else CPU) self time over ``steps`` calls of
    ``step``: where a step's time goes, when the achieved TFLOP/s are far below the peak."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profiler(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    print(f"\nprofile of {steps} {label} steps:")
    print(prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=rows, max_name_column_width=60), flush=True)


def report(row: dict, json_path) -> None:
    """Print ``row`` as soon as it is measured and append it to ``json_path`` (rewritten
    atomically), so that a run cut by its time limit keeps every row it finished."""
    print(f"measured {row['network']} {row['size']} {row['variant']}: {row['it/s']:.2f} it/s", flush=True)
    if json_path:
        doc = json.loads(Path(json_path).read_text())
        doc["rows"].append(row)
        write_atomic(json_path, json.dumps(doc, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--sizes", nargs="+", default=["tiny"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="include torch.compile in the fast path")
    p.add_argument("--device", default="auto")
    p.add_argument("--json")
    p.add_argument("--profile", action="store_true", help="print the top ops of the eager teacher and student steps")
    p.add_argument("--variants", nargs="+", metavar="NAME",
                   help="measure only these variants, named as printed without spaces (eager+autotune, eager-fused); "
                        "plain, the ratios' base, is always measured")
    args = p.parse_args()
    device = resolve_device(args.device)
    eager = {"resident": True, "channels_last": True, "fused": device.type == "cuda", "compile": False,
             "no_sync": True}
    variants = {"plain": dict.fromkeys(OPTIONS, False), "eager": eager}
    if args.compile:  # compiled once: the options are ablated on the eager path
        variants["fast"] = {**eager, "compile": True}
    if device.type == "cuda":
        variants["eager + autotune"] = {**eager, "autotune": True}
    variants.update({f"eager - {k}": {**eager, k: False} for k in OPTIONS if eager[k]})
    if args.variants:
        unknown = set(args.variants) - {name.replace(" ", "") for name in variants}
        if unknown:
            p.error(f"unknown variant(s) {', '.join(sorted(unknown))} on {device.type}; choose from "
                    + ", ".join(name.replace(" ", "") for name in variants))
        variants = {name: v for name, v in variants.items() if name == "plain" or name.replace(" ", "") in args.variants}
    peak = next((v for k, v in PEAK_BF16.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    if args.json:  # a fresh file, which every measured row is added to
        Path(args.json).write_text(json.dumps({"device": str(device), "batch": args.batch, "rows": []}))
    work = Path(tempfile.mkdtemp(prefix="throughput_"))
    rows = []
    try:
        for size in args.sizes:
            base = work / f"teacher_{size}"
            train_teacher(args.data, base, steps=1, batch=args.batch, size=size, device=device.type, progress=False)
            for name, v in variants.items():
                out = work / f"{size}_{name.replace(' ', '')}"
                t = TeacherTrainer(args.data, out, dict(settings(v), batch=args.batch, size=size, val_every=10**9),
                                   device)
                batches = t.batches()
                rate = timed(lambda: t.train_step(next(batches)), not v["no_sync"], args.steps, args.warmup, device,
                             v.get("autotune", False))
                row = {"network": "teacher", "size": size, "variant": name, "it/s": rate,
                       "samples/s": rate * args.batch}
                if name == "plain":  # counted uncompiled; every variant does the same arithmetic
                    flops = step_flops(lambda: t.train_step(next(batches)))
                if name in ("plain", "eager", "fast"):
                    row["tflops"] = flops * rate / 1e12
                rows.append(row)
                report(row, args.json)
                if args.profile and name == "eager":
                    profile(lambda: t.train_step(next(batches)), device, f"eager teacher {size}")
                if name in ("eager - resident", "eager - fused", "fast"):
                    continue  # teacher-only options: the student keeps its pairs on the device, fuses on CUDA
                d = Distiller(base, args.data, out / "student", {"batch": args.batch, "pairs": args.batch, "teacher_steps": 2,
                                                                 "channels_last": v["channels_last"]}, device, False)
                d.bank.fill(progress=False)
                eps, x0 = d.bank.eps.to(device), d.bank.x0.to(device)

                def student_step():
                    regression, physics = d.losses(eps, x0)
                    loss = (regression + d.cfg.lambda_train * physics).mean()
                    d.opt.zero_grad(set_to_none=True)
                    loss.backward()
                    d.opt.step()
                    return loss.detach()

                rate = timed(student_step, not v["no_sync"], args.steps, args.warmup, device, v.get("autotune", False))
                rows.append({"network": "student", "size": size, "variant": name, "it/s": rate,
                             "samples/s": rate * args.batch})
                report(rows[-1], args.json)
                if args.profile and name == "eager":
                    profile(student_step, device, f"eager student {size}")
                d.bank.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
          f"({torch.get_num_threads()} threads), batch {args.batch}")
    for net in ("teacher", "student"):
        for size in args.sizes:
            mine = [r for r in rows if r["network"] == net and r["size"] == size]
            plain = next(r for r in mine if r["variant"] == "plain")["it/s"]
            for r in mine:
                extra = ""
                if "tflops" in r:
                    extra = f"  {r['tflops']:.2f} TFLOP/s" + (f" ({100 * r['tflops'] * 1e12 / peak:.1f}% of bf16 peak)" if peak else "")
                print(f"{net:8s} {size:6s} {r['variant']:22s} {r['it/s']:8.2f} it/s {r['samples/s']:9.1f} samples/s "
                      f"x{r['it/s'] / plain:5.2f}{extra}")


if __name__ == "__main__":
    script_main(main)
