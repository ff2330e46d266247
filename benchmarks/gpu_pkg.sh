# Sourced by the GPU protocols (gpu_session.sh, gpu_training.sh): the package without pip on the
# device machine (torch only there), piddm_fem plus cli/ and solvers/ at their installed names.
mkdir -p /tmp/pkg/piddm_fem
cp -r piddm_fem/. /tmp/pkg/piddm_fem/ && cp -r cli /tmp/pkg/piddm_fem/cli && cp -r solvers /tmp/pkg/piddm_fem/solvers
export PYTHONPATH=/tmp/pkg:benchmarks
