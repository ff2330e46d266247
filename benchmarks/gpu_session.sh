#!/usr/bin/env bash
# The GPU measurement session, run once through the device tool (torch only, no Firedrake there):
#   residual-operator throughput (CPU vs CUDA, torch.compile), a `small` teacher at S = 64 trained on
#   a time budget, PIDDM students over 3 seeds with the lambda = 0 ablation, teacher/student sampling
#   times. Inputs in $DATA (darcy64.h5 with its operator, op128.h5); results in $OUT (<= 8 files).
#   Samples come back for `piddm validate` with Firedrake on the CPU machine.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
DATA=${DATA:-.gpu} OUT=${OUT:-/tmp/gpu_out} DEVICE=${DEVICE:-cuda}
TEACHER_SECONDS=${TEACHER_SECONDS:-170} SIZE=${SIZE:-small} STEPS=${STEPS:-500} N_EVAL=${N_EVAL:-200}
PAIRS=${PAIRS:-1024} TASK_STEPS=${TASK_STEPS:-200} REFINE=${REFINE:-100} RUN=${RUN:-/tmp/p64}
mkdir -p "$OUT" /tmp/pkg/piddm_fem
# the package without pip: piddm_fem plus cli/ and solvers/ at their installed names
cp -r piddm_fem/. /tmp/pkg/piddm_fem/ && cp -r cli /tmp/pkg/piddm_fem/cli && cp -r solvers /tmp/pkg/piddm_fem/solvers
export PYTHONPATH=/tmp/pkg
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
timeout 90 python3 benchmarks/residual_throughput.py --operator "$DATA/darcy64.h5" --operator "$DATA/op128.h5" \
  2>&1 | tee "$OUT/residual.txt"
timeout 440 python3 benchmarks/piddm_pipeline.py --data "$DATA/darcy64.h5" --out "$RUN" --device "$DEVICE" \
  --train-teacher-seconds "$TEACHER_SECONDS" --size "$SIZE" --batch 64 --seeds 0 1 2 --distill-steps "$STEPS" \
  --distill-batch 64 --pairs "$PAIRS" --n-eval "$N_EVAL" --refine-steps "$REFINE" --task-problems 16 \
  --restarts 4 --task-steps "$TASK_STEPS" 2>&1 | grep -v "━" | tee "$OUT/pipeline.txt"
cp "$RUN/summary.json" "$OUT/"
timeout 60 python3 benchmarks/teacher_sampling.py "$RUN/teacher" --devices "$DEVICE" 2>&1 | tee "$OUT/sampling.txt"
cp "$RUN/seed0/teacher_samples.h5" "$RUN/seed0/PIDDM-1_samples.h5" "$RUN/seed0/samples.png" "$RUN/seed0/tasks.png" "$OUT/"
ls -la "$OUT"
