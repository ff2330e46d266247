"""Error against time: `piddm compare` at several budgets, every method's iteration counts scaled by
the same factor, and the curves of error against wall-clock (issue 12: where a goal is missed,
the trade-off found).

Each scale s multiplies the teacher's Heun steps N_s (teacher, ECI, direct's start), the guided
samplers' steps (DiffusionPDE, DPS; DiffusionPDE's observation weight follows its steps where the
problem has no published weights, ``guidance.observation_weights``), PIDDM-ref's refinement steps and the task optimisation steps
(PIDDM-ref, lambda = 0, direct); PIDDM-1 (one call) has no knob and is one point. Every method gets
the same factors: none is tuned more than another. OUT/scale_<s>/ holds each comparison (resumed
method by method after an interruption), OUT/error_vs_time.png the curves (samples: residual
against ms per sample; tasks: headline error against seconds per problem; mean ± std over the
seeds) and OUT/error_vs_time.md their table.

    python benchmarks/error_vs_time.py --data demo_out/data.h5 --teacher demo_out/teacher \\
        --student demo_out/student --ablation demo_out/student/physics_start.pt --out runs/evt \\
        --scales 0.25 0.5 1 2 --seeds 0 1 --guidance-steps 50 --n-eval 64
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from piddm_fem.errors import script_main
from piddm_fem.evaluation import compare, load_setup, make_budget
from piddm_fem.interrupt import write_atomic
from piddm_fem.report import headline, tradeoff_axes, tradeoff_figure, write_compare

METHODS = "teacher,PIDDM-1,PIDDM-ref,lambda=0,diffusionpde-weak,dps-weak,eci,direct"
KNOBS = ("heun_steps", "guidance_steps", "refine_steps", "task_steps")


def scaled(budget, s: float):
    """The budget with every method's iteration counts times ``s`` (N_s at least 2, others 1)."""
    return replace(budget, **{k: max(2 if k == "heun_steps" else 1, round(getattr(budget, k) * s)) for k in KNOBS})


def table(docs: list[dict], scales: list[float]) -> str:
    """Markdown: per panel of ``tradeoff_axes``, a row per method and a column per scale: the
    error, mean ± std over the seeds, and in brackets the time (the panel's x label)."""
    lines = []
    for ylabel, series, xlabel in tradeoff_axes(docs):
        lines += [f"### {ylabel} against {xlabel}", "",
                  "| method | " + " | ".join(f"x{s:g}" for s in scales) + " |", "|---" * (len(scales) + 1) + "|"]
        for name, (x, y, err) in series.items():
            cells = [f"{b:.3g} ± {e:.2g} ({a:.3g})" for a, b, e in zip(x, y, err)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--student", help="the PIDDM student (PIDDM-1, PIDDM-ref)")
    p.add_argument("--ablation", help="the lambda_train = 0 student")
    p.add_argument("--out", required=True)
    p.add_argument("--scales", type=float, nargs="+", default=[0.25, 0.5, 1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--methods", default=METHODS, help=f"comma-separated [{METHODS}]")
    p.add_argument("--tasks", help="comma-separated [every task of the problem]; none: the samples alone")
    p.add_argument("--guidance-steps", type=int, help="the guided samplers' steps at scale 1 [200]")
    p.add_argument("--n-eval", type=int)
    p.add_argument("--task-problems", type=int)
    p.add_argument("--quick", action="store_true", help="tiny budgets (the test's smoke run)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    out = Path(args.out)
    students = {k: v for k, v in (("PIDDM", args.student), ("lambda=0", args.ablation)) if v}
    base = make_budget(args.teacher, args.quick, guidance_steps=args.guidance_steps, n_eval=args.n_eval,
                       task_problems=args.task_problems)
    scales = sorted(args.scales)
    tasks = None if not args.tasks else [] if args.tasks == "none" else args.tasks.split(",")
    docs = []
    for s in scales:
        where = out / f"scale_{s:g}"
        setup = load_setup(args.data, args.teacher, students, scaled(base, s), args.device, where)
        doc = compare(setup, args.methods.split(","), args.seeds, tasks, figures=False)
        write_compare(where, doc)
        docs.append(doc)
        print(f"scale {s:g}: " + "; ".join(
            f"{m['method']} " + " ".join(f"{t} {v[headline(v)]['mean']:.3g}" for t, v in m.get("tasks", {}).items())
            for m in doc["methods"]), flush=True)
    title = (f"{docs[0]['display_name']} S = {docs[0]['resolution']}: error against time, every method's steps x "
             f"{', '.join(f'{s:g}' for s in scales)} ({docs[0]['machine']})")
    tradeoff_figure(docs, out / "error_vs_time.png", title)
    write_atomic(out / "error_vs_time.md", f"# {title}\n\n{table(docs, scales)}")
    print(f"wrote {out / 'error_vs_time.png'} and {out / 'error_vs_time.md'}")
    return docs


if __name__ == "__main__":
    script_main(main)
