"""Residual throughput: the torch weak-form operator (stencil path and general path) vs
Firedrake's assemble loop, side by side in one run.

Prints fields/s at S = 64 and 128 for a batch of B = 256 random Darcy fields: the stencil path
(structured grid: shifted slices), the general path (gather, einsum, index_add) on the same operator,
in float64 and float32, and the Firedrake assemble loop (per sample), with their ratios; CUDA rows
when a GPU is present, eager, under torch.compile and compiled with CUDA graphs (on the H200 the eager stencil path ran at the
same ~0.3M fields/s at S = 64 and 128: launch-bound, docs/results.md). Each rate is the best of
repeated timings (the machine may be shared), and the load average is printed beside it. Without
Firedrake (a GPU node), pass operator files exported beforehand:
    python benchmarks/residual_throughput.py --operator op64.h5 --operator op128.h5
Export one with: python benchmarks/residual_throughput.py --export op64.h5 --res 64
``--chunk-nodes N`` (repeatable) adds CPU stencil rows for batch chunks of N nodes beside the
default (piddm_fem.residual._CHUNK_NODES; 2^15 - 1 before issue 11's last change, 2^17 since).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from piddm_fem import grid, residual, schema
from piddm_fem.checks import check_range
from piddm_fem.errors import script_main
from piddm_fem.residual import ResidualOperator


def rate(fn, n_fields: int, repeats: int = 7) -> float:
    """Fields per second of the fastest of ``repeats`` calls (after a warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_fields / best


def random_batch(S: int, B: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    a = 3 + 9 * (torch.rand(B, 1, S, S, generator=g, dtype=torch.float64) > 0.5)
    u = 0.05 * torch.rand(B, 1, S, S, generator=g, dtype=torch.float64)
    return torch.cat([a, u], 1)


def bench(op: dict, B: int, assemble_loop=None, chunks=()) -> None:
    S = op["resolution"]
    paths = {"stencil": ResidualOperator(op), "general": ResidualOperator(op, stencil=False)}
    if not paths["stencil"].uses_stencil:
        raise SystemExit("this operator is not on the structured grid; re-export it")
    x = random_batch(S, B)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = {}
    with torch.no_grad():
        err = (paths["stencil"].raw(x) - paths["general"].raw(x)).abs().max() / paths["general"].raw(x).abs().max()
        print(f"\nDarcy S={S}: stencil and general paths agree to {err:.1e} relative (float64)")
        for dtype, name in ((torch.float64, "f64"), (torch.float32, "f32")):
            y = x.to(dtype)
            for path, op_ in paths.items():
                rows[f"{path} cpu {name}"] = rate(lambda: op_.raw(y), B)
            default = residual._CHUNK_NODES
            for nodes in chunks:
                residual._CHUNK_NODES = nodes
                rows[f"stencil cpu {name} chunk={nodes}"] = rate(lambda: paths["stencil"].raw(y), B)
            residual._CHUNK_NODES = default
        if torch.cuda.is_available():
            gx = x.cuda()
            for path, op_ in paths.items():
                gop = op_.to("cuda")
                for dtype, name in ((torch.float64, "f64"), (torch.float32, "f32")):
                    y = gx.to(dtype)

                    def run():
                        gop.raw(y)
                        torch.cuda.synchronize()

                    rows[f"{path} cuda {name}"] = rate(run, B)
                y = gx.to(torch.float32)
                # one launch-bound chain of small kernels fused; then also replayed as a CUDA graph,
                # without the per-call host work that bounds both paths at S = 64 (B = 256 fields
                # take about 0.1 ms compiled on the H200)
                for mode, label in ((None, "compiled"), ("reduce-overhead", "compiled+graphs")):
                    fused = torch.compile(gop.raw, mode=mode)

                    def run_compiled():
                        fused(y)
                        torch.cuda.synchronize()

                    try:  # a compiler failure must not cost the eager rows of a scarce GPU run
                        rows[f"{path} cuda f32 {label}"] = rate(run_compiled, B)
                    except Exception as exc:  # noqa: BLE001  (torch._dynamo raises many kinds)
                        print(f"  {path} cuda f32 {label}: failed ({type(exc).__name__})")
                op_.to("cpu")
    if assemble_loop is not None:
        n = 16
        rows["firedrake assemble"] = rate(lambda: assemble_loop(x[:n].numpy()), n, repeats=3)
    base = rows.get("firedrake assemble")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"batch {B}, {torch.get_num_threads()} threads, load average {load}")
    for name, value in rows.items():
        ratio = f"{value / base:8.1f}x firedrake" if base else ""
        path, _, rest = name.partition(" ")
        general = rows.get(f"general {rest.split(' chunk')[0]}") if path == "stencil" else None
        vs = f"{value / general:6.1f}x general" if general else ""
        print(f"  {name:32s} {value:12.1f} fields/s  {ratio}  {vs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--res", type=int, action="append", help="grid sizes (default 64 and 128)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--operator", action="append", help="dataset/operator files (no Firedrake needed)")
    p.add_argument("--export", help="write the Darcy operator at --res to this file and exit")
    p.add_argument("--chunk-nodes", type=int, action="append", default=[],
                   help="also time the CPU stencil path on batch chunks of this many nodes")
    args = p.parse_args()
    check_range("--batch", args.batch, "[1, inf)")
    sizes = [grid.check_resolution(S) for S in args.res or [64, 128]]
    if args.operator:
        for path in args.operator:
            bench(schema.read_operator(path), args.batch, chunks=args.chunk_nodes)
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
        bench(op, args.batch, lambda xs: [disc.raw_residual(f) for f in xs], args.chunk_nodes)


if __name__ == "__main__":
    script_main(main)
