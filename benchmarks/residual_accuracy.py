"""How exactly the torch operator reproduces Firedrake's assemble(F): max relative differences per
problem, on random fields, in float64 and float32, on reordered and unreordered meshes.

    python benchmarks/residual_accuracy.py [--res 33]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from piddm_fem.errors import script_main
from piddm_fem.residual import ResidualOperator
from piddm_fem.solvers import get_problem, problem_names
from piddm_fem.solvers.discrete import DiscreteProblem
from piddm_fem.solvers.export import extract_operator


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--res", type=int, default=33)
    args = p.parse_args()
    S = args.res
    print(f"S={S}: max |torch - assemble| / max |assemble| on 4 random fields")
    print(f"{'problem':10s} {'reorder':8s} {'float64':>10s} {'float32':>10s} {'relative residual (f64)':>24s}")
    for name in problem_names():
        problem = get_problem(name)
        for reorder in (True, False):
            disc = DiscreteProblem(problem, S, reorder=reorder)
            op = ResidualOperator(extract_operator(problem, S, reorder=reorder))
            rng = np.random.default_rng(0)
            x = rng.standard_normal((4, len(problem.channels), S, S))
            ref = np.stack([disc.raw_residual(f) for f in x]).reshape(4, 1, S, S)
            scale = np.abs(ref).max()
            e64 = np.abs(op.raw(torch.from_numpy(x)).numpy() - ref).max() / scale
            e32 = np.abs(op.raw(torch.from_numpy(x).float()).double().numpy() - ref).max() / scale
            rel = np.abs(op.relative(torch.from_numpy(x)).numpy() - [disc.relative_residual(f) for f in x]).max()
            print(f"{name:10s} {str(reorder):8s} {e64:10.1e} {e32:10.1e} {rel:24.1e}")


if __name__ == "__main__":
    script_main(main)
