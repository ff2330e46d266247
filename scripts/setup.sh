#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine: apt packages, .venv, PETSc 3.26 built from the
# PyPI sdist against Debian's libraries (no downloads during configure), petsc4py, MPI h5py,
# Firedrake, CPU torch, and this package in editable mode. Every stage prints its wall time.
# Built wheels land in pip's cache (~/.cache/pip), so a second clone on the same machine sets up in
# minutes. Each finished stage leaves a stamp in .venv/.stamps; delete .venv to start over.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
STAMPS=$VENV/.stamps
PETSC_VERSION=3.26.0
FIREDRAKE_VERSION=2026.10.0
TORCH_VERSION=2.13.0
export OMP_NUM_THREADS=1
export PIP_PROGRESS_BAR=off

APT_PACKAGES="gfortran bison flex cmake ninja-build pkg-config libopenmpi-dev openmpi-bin
libhdf5-openmpi-dev libopenblas-dev libmetis-dev libptscotch-dev libscalapack-openmpi-dev
libmumps-ptscotch-dev libsuitesparse-dev zlib1g-dev libfftw3-dev libfftw3-mpi-dev"

HDF5_DIR_DEB=/usr/lib/x86_64-linux-gnu/hdf5/openmpi
PETSC_CONFIGURE_OPTIONS="--with-c2html=0 --with-debugging=0 --with-fortran-bindings=0 \
--with-shared-libraries=1 --with-strict-petscerrorcode --with-cuda=0 --with-hip=0 --with-sycl=0 \
--with-x=0 --with-hdf5-include=/usr/include/hdf5/openmpi \
--with-hdf5-lib=[$HDF5_DIR_DEB/lib/libhdf5.so,$HDF5_DIR_DEB/lib/libhdf5_hl.so] \
--with-metis --with-ptscotch --with-ptscotch-include=/usr/include/scotch \
--with-ptscotch-lib=[-lptesmumps,-lptscotch,-lptscotcherr,-lesmumps,-lscotch,-lscotcherr] \
--with-mumps --with-scalapack-lib=-lscalapack-openmpi --with-suitesparse --with-zlib --with-fftw \
COPTFLAGS=-O2 CXXOPTFLAGS=-O2 FOPTFLAGS=-O2"

TOTAL_START=$(date +%s)
stage() {  # stage NAME COMMAND...: run once, stamp, print the time it took
  local name=$1; shift
  if [[ -f $STAMPS/$name ]]; then
    printf '[setup] %-12s already done\n' "$name"; return
  fi
  local t0=$(date +%s)
  printf '[setup] %-12s ...\n' "$name"
  "$@"
  mkdir -p "$STAMPS"; touch "$STAMPS/$name"
  printf '[setup] %-12s done in %ds\n' "$name" $(( $(date +%s) - t0 ))
}

apt_packages() {
  local missing
  missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PACKAGES 2>/dev/null \
            | awk '$NF!="installed"{print $1}'; \
            for p in $APT_PACKAGES; do dpkg-query -W "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [[ -z $missing ]]; then echo "[setup] apt packages present"; return; fi
  local SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
  $SUDO apt-get update -qq || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $(echo $missing | tr ' ' '\n' | sort -u)
}

make_venv() {
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
  [[ -x $VENV/bin/python ]] || "$PYTHON" -m venv "$VENV"
  pip_ install --upgrade pip setuptools wheel
  pip_ install "cython>=3" numpy pkgconfig mpi4py
}

pip_() { "$VENV/bin/python" -m pip "$@"; }

# Keep the PETSc chain and torch where the set-up built them: nothing may upgrade them later.
CONSTRAINTS=$VENV/constraints.txt
write_constraints() {
  printf 'petsc==%s\npetsc4py==%s\ntorch==%s\n' "$PETSC_VERSION" "$PETSC_VERSION" "$TORCH_VERSION" > "$CONSTRAINTS"
}

build_petsc() {
  PETSC_CONFIGURE_OPTIONS="$PETSC_CONFIGURE_OPTIONS" pip_ install -v "petsc==$PETSC_VERSION" \
    > "$VENV/petsc-build.log" 2>&1 || { tail -40 "$VENV/petsc-build.log"; exit 1; }
}
build_petsc4py() { pip_ install --no-build-isolation "petsc4py==$PETSC_VERSION"; }
build_h5py() {
  HDF5_MPI=ON CC=mpicc HDF5_DIR=$HDF5_DIR_DEB pip_ install --no-build-isolation --no-binary h5py h5py
}
install_firedrake() {
  # Without build isolation: an isolated build env would pull the newest PETSc 3.26.x sdist and
  # compile it again (without our configure options). Its build requirements go in the venv.
  pip_ install -c "$CONSTRAINTS" firedrake-rtree libsupermesh petsctools pybind11 rtree
  pip_ install -c "$CONSTRAINTS" --no-build-isolation --no-deps "firedrake==$FIREDRAKE_VERSION"
  pip_ install -c "$CONSTRAINTS" "firedrake==$FIREDRAKE_VERSION" vtk  # dependencies; vtk for .pvd
}
install_torch() { pip_ install -c "$CONSTRAINTS" "torch==$TORCH_VERSION"; }
install_package() { pip_ install -c "$CONSTRAINTS" -e '.[test]'; }

stage apt apt_packages
stage venv make_venv
write_constraints
stage petsc build_petsc
stage petsc4py build_petsc4py
stage h5py build_h5py
stage firedrake install_firedrake
stage torch install_torch
# the package stage always re-runs (cheap), so a changed pyproject.toml is picked up
rm -f "$STAMPS/package"; stage package install_package
printf '[setup] total %ds\n' $(( $(date +%s) - TOTAL_START ))
