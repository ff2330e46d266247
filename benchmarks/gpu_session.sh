#!/usr/bin/env bash
# The GPU measurement session, one 10-minute run through the device tool (torch only, no Firedrake
# there): residual-operator throughput, then the issue-14 comparison (benchmarks/piddm_pipeline.py):
# a teacher trained on a time budget (warm-up not counted), the PIDDM student and its
# lambda_train = 0 ablation, and every method of `piddm compare` on that teacher over 3 seeds; then
# the cost of DiffusionPDE's default 2000-step guided sampling for the speed claim.
# Inputs in $DATA (<= 60 MB): darcy64.h5 with its operator (`piddm generate darcy -n 600 --res 64`
# is 40 MB), op128.h5. Results in $OUT: compare.json/md and figures, compare2000.json, logs.
# Tested at tiny size on the CPU: tests/test_baselines.py::test_gpu_protocol_pipeline_runs_at_tiny_size_on_the_cpu.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
DATA=${DATA:-.gpu} OUT=${OUT:-/tmp/gpu_out} DEVICE=${DEVICE:-cuda}
TEACHER_SECONDS=${TEACHER_SECONDS:-150} SIZE=${SIZE:-small} STEPS=${STEPS:-500} PAIRS=${PAIRS:-1024}
GUIDANCE=${GUIDANCE:-250} RUN=${RUN:-/tmp/p64}
mkdir -p "$OUT" /tmp/pkg/piddm_fem
# the package without pip: piddm_fem plus cli/ and solvers/ at their installed names
cp -r piddm_fem/. /tmp/pkg/piddm_fem/ && cp -r cli /tmp/pkg/piddm_fem/cli && cp -r solvers /tmp/pkg/piddm_fem/solvers
export PYTHONPATH=/tmp/pkg
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
timeout 60 python3 benchmarks/residual_throughput.py --operator "$DATA/darcy64.h5" --operator "$DATA/op128.h5" \
  2>&1 | tee "$OUT/residual.txt"
timeout 420 python3 benchmarks/piddm_pipeline.py --data "$DATA/darcy64.h5" --out "$RUN" --device "$DEVICE" \
  --train-teacher-seconds "$TEACHER_SECONDS" --size "$SIZE" --batch 64 --seeds 0 1 2 --distill-steps "$STEPS" \
  --distill-batch 64 --pairs "$PAIRS" --guidance-steps "$GUIDANCE" --n-eval 128 --task-problems 16 \
  2>&1 | grep -v "━" | tee "$OUT/pipeline.txt"
cp "$RUN"/compare.json "$RUN"/compare.md "$RUN"/*.png "$OUT/"
# DiffusionPDE's default: 2000 guided Heun steps (3999 NFE), for the per-sample cost only
timeout 100 python3 benchmarks/piddm_pipeline.py --data "$DATA/darcy64.h5" --out "$RUN" --compare-out "$RUN/g2000" \
  --device "$DEVICE" --seeds 0 --methods dps-weak,PIDDM-1 --guidance-steps 2000 --n-eval 16 2>&1 | grep -v "━" | tee "$OUT/g2000.txt"
cp "$RUN/g2000/compare.json" "$OUT/compare2000.json"
ls -la "$OUT"
