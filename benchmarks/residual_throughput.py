"""Residual throughput: the torch weak-form operator vs Firedrake's assemble loop.

Prints fields/s at S = 64 and 128 for a batch of B = 256 random Darcy fields: torch on the CPU
(float64 and float32), the Firedrake assemble loop (per sample), their ratio, and CUDA when a GPU is
present. Without Firedrake (a GPU node), pass operator files exported beforehand:
    python benchmarks/residual_throughput.py --operator op64.h5 --operator op128.h5
Export one with: python benchmarks/residual_throughput.py --export op64.h5 --res 64
"""

from __future__ import annotations

import argparse
import time

import torch

from piddm_fem import schema
from piddm_fem.residual import ResidualOperator


def rate(fn, n_fields: int, min_time: float = 1.0) -> float:
    fn()  # warm-up
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_time:
        fn()
        reps += 1
    return reps * n_fields / (time.perf_counter() - t0)


def random_batch(S: int, B: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = 3 + 9 * (torch.rand(B, 1, S, S, generator=g, dtype=torch.float64) > 0.5)
    u = 0.05 * torch.rand(B, 1, S, S, generator=g, dtype=torch.float64)
    return torch.cat([a, u], 1)


def bench(op: ResidualOperator, B: int, assemble_loop=None) -> None:
    S = op.resolution
    x = random_batch(S, B)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = {}
    with torch.no_grad():
        rows["torch cpu f64"] = rate(lambda: op.raw(x), B)
        rows["torch cpu f32"] = rate(lambda: op.raw(x.float()), B)
        if torch.cuda.is_available():
            gop, gx = op.to("cuda"), x.cuda()
            for dtype, name in ((torch.float64, "f64"), (torch.float32, "f32")):
                y = gx.to(dtype)

                def run():
                    gop.raw(y)
                    torch.cuda.synchronize()

                rows[f"torch cuda {name}"] = rate(run, B)
            compiled = torch.compile(gop.raw)
            y = gx.float()
            err = (compiled(y) - gop.raw(y)).abs().max() / gop.raw(y).abs().max()
            print(f"  torch.compile (cuda f32) agrees with eager to {err:.1e} relative")

            def run_compiled():
                compiled(y)
                torch.cuda.synchronize()

            rows["torch.compile cuda f32"] = rate(run_compiled, B)
            op.to("cpu")
    if assemble_loop is not None:
        n = 16
        rows["firedrake assemble"] = rate(lambda: assemble_loop(x[:n].numpy()), n)
    base = rows.get("firedrake assemble")
    print(f"\nDarcy S={S}, batch {B} ({torch.get_num_threads()} threads)")
    for name, value in rows.items():
        ratio = f"{value / base:8.1f}x firedrake" if base else ""
        print(f"  {name:20s} {value:12.1f} fields/s  {ratio}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, action="append", help="grid sizes (default 64 and 128)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--operator", action="append", help="dataset/operator files (no Firedrake needed)")
    p.add_argument("--export", help="write the Darcy operator at --res to this file and exit")
    args = p.parse_args()
    sizes = args.res or [64, 128]
    if args.operator:
        for path in args.operator:
            bench(ResidualOperator.from_file(path), args.batch)
        return
    from piddm_fem.solvers import get_problem
    from piddm_fem.solvers.discrete import DiscreteProblem
    from piddm_fem.solvers.export import extract_operator

    problem = get_problem("darcy")
    for S in sizes:
        op = extract_operator(problem, S)
        if args.export:
            import h5py

            with h5py.File(args.export, "w") as f:
                schema.write_operator(None, op, h5file=f)
            print(f"wrote {args.export}")
            return
        disc = DiscreteProblem(problem, S)
        bench(ResidualOperator(op), args.batch, lambda xs: [disc.raw_residual(f) for f in xs])


if __name__ == "__main__":
    main()
