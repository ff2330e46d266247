"""Every inverse method on the same held-out problems, observations and seeds (docs/inverse.md).

    python benchmarks/inverse.py --data demo_out/data.h5 --student demo_out/student \
        --problems 32 --seeds 0 1 2 --noise 0 --json inverse0.json [--calibrate]

Methods (solvers/inverse.py): the adjoint inversion from a constant; Algorithm 3 with the soft
residual penalty; Algorithm 3 then the adjoint; latent inversion with the exact FEM solve;
latent-FEM then the adjoint. Observations: Algorithm 3's inverse masks (500 random nodes at 128^2
scaled by S^2; 33 at S = 33), per seed, noise-free or with relative Gaussian noise. Problems:
the first ``--problems`` of the teacher's test split. ``--calibrate`` first chooses the H1 weight
alpha of the adjoint from {1e-3, 1e-4, 1e-5, 1e-6} on 4 training-split problems (lowest median
error rate of a, constant start): the rule docs/inverse.md states. Prints mean +- std over seeds
of the per-seed medians, and for the warm starts the L-BFGS iterations needed to reach the
constant start's final misfit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from piddm_fem import schema
from piddm_fem.solvers.inverse import MAXITER, METHODS, alpha_for, invert, iterations_to_reach
from piddm_fem.solvers.surrogate import Surrogate
from piddm_fem.teacher import dataset_splits, load_teacher

ALPHAS = (1e-3, 1e-4, 1e-5, 1e-6)


def calibrate(problem, data, train_indices, noise: float, adjoint_steps: int) -> tuple[float, dict]:
    _, truth, _ = schema.read(data, train_indices[:4])
    scores = {}
    for alpha in ALPHAS:
        r = invert(problem, truth, ["adjoint"], seed=0, noise=noise, adjoint_steps=adjoint_steps, alpha=alpha)
        scores[alpha] = r["methods"]["adjoint"]["summary"]["error_rate_a"]["median"]
        print(f"calibration noise {noise}: alpha {alpha:g} -> median error rate {scores[alpha]:.4f}", flush=True)
    return min(scores, key=scores.get), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--student", type=Path, required=True)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=100, help="Adam steps of Algorithm 3 (both physics)")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--adjoint-steps", type=int, default=MAXITER)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    surrogate = Surrogate.load(args.student, device="cpu")
    _, teacher_ckpt = load_teacher(surrogate.ckpt["teacher"]["path"])
    _, splits = dataset_splits(teacher_ckpt, args.data)
    test = splits["test"][: args.problems]
    _, truth, _ = schema.read(args.data, test)
    alpha, scores = alpha_for(args.noise), None
    if args.calibrate:
        alpha, scores = calibrate(surrogate.problem, args.data, splits["train"], args.noise, args.adjoint_steps)
    runs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        r = invert(surrogate.problem, truth, args.methods, student=surrogate.student,
                   normalizer=surrogate.normalizer, operator=surrogate.operator, seed=seed, noise=args.noise,
                   steps=args.steps, restarts=args.restarts, adjoint_steps=args.adjoint_steps, alpha=alpha)
        run = {"seed": seed, "methods": {k: {"problems": v["problems"], "summary": v["summary"],
                                              "history": v["history"]} for k, v in r["methods"].items()}}
        if "adjoint" in r["methods"]:
            cold = r["methods"]["adjoint"]
            for warm in ("soft+adjoint", "fem+adjoint"):
                if warm in r["methods"]:
                    reach = [iterations_to_reach(h, hc[-1])
                             for h, hc in zip(r["methods"][warm]["history"], cold["history"])]
                    run["methods"][warm]["iterations_to_cold_misfit"] = reach
        runs.append(run)
        print(f"seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)

    S = surrogate.S
    points = int(r["mask"][0, surrogate.channels.index(surrogate.problem.unknown)].sum())
    print(f"\n{surrogate.problem.name} S={S}, {len(test)} test problems, {points} observed nodes, "
          f"noise {args.noise}, alpha {alpha:g}, seeds {args.seeds}: mean +- std over seeds of the medians")
    print(f"{'method':>13} {'error rate a':>15} {'rel. L2 a':>15} {'misfit':>19} {'iterations':>11} "
          f"{'to cold misfit':>15} {'s/problem':>10}")
    table = {}
    for name in args.methods:
        med = {k: [run["methods"][name]["summary"][k]["median"] for run in runs]
               for k in ("error_rate_a", "rel_l2_a", "misfit", "iterations", "seconds")}
        reach = [x for run in runs for x in run["methods"][name].get("iterations_to_cold_misfit", [])]
        reached = [x for x in reach if x is not None]
        table[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in med.items()}
        if reach:
            table[name]["iterations_to_cold_misfit"] = {
                "median": float(np.median(reached)) if reached else None, "reached": len(reached), "of": len(reach)}
        to_cold = (f"{np.median(reached):.0f} ({len(reached)}/{len(reach)})" if reached else "never") if reach else ""
        print(f"{name:>13} {np.mean(med['error_rate_a']):>7.4f} +- {np.std(med['error_rate_a']):.4f} "
              f"{np.mean(med['rel_l2_a']):>7.4f} +- {np.std(med['rel_l2_a']):.4f} "
              f"{np.mean(med['misfit']):>9.2e} +- {np.std(med['misfit']):.1e} {np.mean(med['iterations']):>11.1f} "
              f"{to_cold:>15} {np.mean(med['seconds']):>10.2f}")
    if args.json:
        args.json.write_text(json.dumps({"problem": surrogate.problem.name, "S": S, "points": points,
                                         "noise": args.noise, "alpha": alpha, "calibration": scores,
                                         "test_indices": test.tolist(), "settings": vars(args) | {
                                             "data": str(args.data), "student": str(args.student),
                                             "json": str(args.json)},
                                         "table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
