# The two commands of the README: `make demo` and `make test`. Both set up what is missing first.
VENV   := .venv
PY     := $(VENV)/bin/python
PIDDM  := $(VENV)/bin/piddm
export OMP_NUM_THREADS := 1
export OMPI_ALLOW_RUN_AS_ROOT := 1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM := 1
export OMPI_MCA_rmaps_base_oversubscribe := 1

.PHONY: setup test demo bench clean

setup:
	./scripts/setup.sh

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PIDDM) demo --out demo_out

bench: setup
	$(PY) benchmarks/generate_throughput.py
	$(PY) benchmarks/residual_throughput.py
	$(PY) benchmarks/teacher_sampling.py

clean:
	rm -rf demo_out .pytest_cache
