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
of the per-seed medians, and for every adjoint run the L-BFGS-B iterations until its misfit is
within 1% of the constant start's final misfit on the same problem. ``--from-json`` prints the
table of a saved run again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from piddm_fem import schema
from piddm_fem.checks import check_choice, check_range
from piddm_fem.errors import script_main
from piddm_fem.interrupt import write_atomic
from piddm_fem.solvers.inverse import MAXITER, METHODS, alpha_for, invert, iterations_to_reach
from piddm_fem.solvers.surrogate import Surrogate
from piddm_fem.teacher import dataset_splits, load_teacher

ALPHAS = (1e-3, 1e-4, 1e-5, 1e-6)
REACH = 1.01  # "reached the constant start's final misfit": within 1% of it


def calibrate(problem, data, train_indices, noise: float, adjoint_steps: int) -> tuple[float, dict]:
    _, truth, _ = schema.read(data, train_indices[:4])
    scores = {}
    for alpha in ALPHAS:
        r = invert(problem, truth, ["adjoint"], seed=0, noise=noise, adjoint_steps=adjoint_steps, alpha=alpha)
        scores[alpha] = r["methods"]["adjoint"]["summary"][f"error_rate_{r['coefficient']}"]["median"]
        print(f"calibration noise {noise}: alpha {alpha:g} -> median error rate {scores[alpha]:.4f}", flush=True)
    return min(scores, key=scores.get), scores


def report(runs: list[dict], methods, header: str, c: str) -> dict:
    """Print and return the table: per method, mean and std over seeds of the per-seed medians of
    the errors of the recovered coefficient ``c``, and the median iterations to reach the constant
    start's final misfit (within 1%)."""
    print(header)
    print(f"{'method':>13} {'error rate ' + c:>15} {'off interfaces':>15} {'at interfaces':>15} "
          f"{'rel. L2 ' + c:>15} {'misfit':>19} {'iterations':>11} {'to cold misfit':>15} {'s/problem':>10}")
    table = {}
    # runs saved before 2026-12-06 have no _off/_at_interfaces columns: blank cells
    errors = [f"error_rate_{c}", f"error_rate_{c}_off_interfaces", f"error_rate_{c}_at_interfaces", f"rel_l2_{c}"]
    for name in methods:
        summary = [run["methods"][name]["summary"] for run in runs]
        med = {k: [s[k]["median"] for s in summary]
               for k in (*errors, "misfit", "iterations", "seconds") if k in summary[0]}
        table[name] = {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in med.items()}
        to_cold = ""
        if name.endswith("adjoint") and "adjoint" in methods:
            reach = [iterations_to_reach(h, REACH * cold[-1]) for run in runs
                     for h, cold in zip(run["methods"][name]["history"], run["methods"]["adjoint"]["history"])]
            reached = [x for x in reach if x is not None]
            table[name]["iterations_to_cold_misfit"] = {
                "median": float(np.median(reached)) if reached else None, "reached": len(reached), "of": len(reach)}
            to_cold = f"{np.median(reached):.0f} ({len(reached)}/{len(reach)})" if reached else "never"
        print(f"{name:>13} "
              + "".join(f"{np.mean(med[k]):>7.4f} +- {np.std(med[k]):.4f} " if k in med else f"{'':>15} "
                        for k in errors)
              + f"{np.mean(med['misfit']):>9.2e} +- {np.std(med['misfit']):.1e} {np.mean(med['iterations']):>11.1f} "
              f"{to_cold:>15} {np.mean(med['seconds']):>10.2f}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--student", type=Path)
    parser.add_argument("--problems", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=100, help="Adam steps of Algorithm 3 (both physics)")
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--adjoint-steps", type=int, default=MAXITER)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path, help="print the table of a saved run and exit")
    args = parser.parse_args()
    check_range("--problems", args.problems, "[1, inf)")
    check_range("--restarts", args.restarts, "[1, inf)")
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        report(saved["runs"], list(saved["runs"][0]["methods"]), saved["header"], saved.get("coefficient", "a"))
        return
    if args.data is None or args.student is None:
        parser.error("--data and --student are needed (or --from-json)")
    for name in args.methods:  # before any work, the calibration included
        check_choice("--methods", name, METHODS)
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
        runs.append({"seed": seed, "methods": {k: {"problems": v["problems"], "summary": v["summary"],
                                                   "history": v["history"]} for k, v in r["methods"].items()}})
        print(f"seed {seed}: {time.perf_counter() - t0:.0f}s", flush=True)
    points = int(r["mask"][0, surrogate.channels.index(surrogate.problem.unknown)].sum())
    header = (f"\n{surrogate.problem.name} S={surrogate.S}, {len(test)} test problems, {points} observed nodes, "
              f"noise {args.noise}, alpha {alpha:g}, seeds {args.seeds}: mean +- std over seeds of the medians")
    table = report(runs, args.methods, header, r["coefficient"])
    if args.json:
        write_atomic(args.json, json.dumps({"problem": surrogate.problem.name, "S": surrogate.S, "points": points,
                                         "coefficient": r["coefficient"],
                                         "noise": args.noise, "alpha": alpha, "calibration": scores,
                                         "test_indices": test.tolist(), "header": header,
                                         "settings": vars(args) | {k: str(getattr(args, k)) for k in
                                                                  ("data", "student", "json", "from_json")},
                                         "table": table, "runs": runs}, indent=1))


if __name__ == "__main__":
    script_main(main)
