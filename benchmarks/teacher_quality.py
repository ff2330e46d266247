"""Teacher quality against held-out data: MMSE/SMSE per channel, fraction of a near 12, the FEM
residual of teacher samples against the ground truth's, and samples/s.

    python benchmarks/teacher_quality.py TEACHER_DIR DATA.h5 [--n 256] [--steps 18] [--out samples.h5]
"""

from __future__ import annotations

import argparse
import json


from piddm_fem import checkpoint, metrics, schema
from piddm_fem.edm import HEUN_STEPS
from piddm_fem.errors import script_main
from piddm_fem.evaluation import fem_relative
from piddm_fem.teacher import dataset_splits, sample_teacher


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("teacher")
    p.add_argument("data")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=HEUN_STEPS)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", default="teacher_quality_samples.h5")
    args = p.parse_args()
    ckpt = checkpoint.load(args.teacher, kind="teacher")
    info, splits = dataset_splits(ckpt, args.data)
    _, reference, _ = schema.read(args.data, splits["test"])
    stats = sample_teacher(args.teacher, args.n, args.steps, args.seed, args.out, overwrite=True, progress=False)
    _, samples, _ = schema.read(args.out)
    mmse, smse = metrics.mmse_smse(samples, reference)
    thresholds = info.meta["thresholds"]  # binary channels: the share above the threshold
    report = {
        "teacher_step": int(ckpt["step"]), "n": args.n, "n_test": int(splits["test"].size),
        "mmse": dict(zip(info.channels, mmse.tolist())), "smse": dict(zip(info.channels, smse.tolist())),
        "fraction_high": {c: metrics.high_fraction(samples, info.channels.index(c), t) for c, t in thresholds.items()},
        "fraction_high_data": {c: metrics.high_fraction(reference, info.channels.index(c), t)
                               for c, t in thresholds.items()},
        "fem_residual_teacher": metrics.summarize(fem_relative(info, samples)),
        "fem_residual_data": metrics.summarize(fem_relative(info, reference)),
        "samples_per_second": args.n / stats["seconds"], "nfe": stats["nfe"]}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    script_main(main)
