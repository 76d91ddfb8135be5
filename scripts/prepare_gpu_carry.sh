#!/usr/bin/env bash
# Prepare what scripts/gpu_table1.sh needs on the device machine, which has torch but no network:
# the wheels of the pure-Python packages its image lacks (pyro-ppl and arviz with their missing
# dependencies) and the MNIST files, in the git-ignored folder .carry/ of this repository. Run it
# HERE (a machine with pip access), then name `.carry` in the device tool's `carry` option, which
# ships ignored paths with the working tree (about 15 MiB). Nothing of it is committed.
#
#   bash scripts/prepare_gpu_carry.sh            # MNIST from ../shared/data/mnist (or $MNIST_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
MNIST=${MNIST_DIR:-../shared/data/mnist}
mkdir -p .carry/wheels .carry/mnist
# pyro-ppl needs pyro-api; arviz needs h5netcdf, xarray-einstats and platformdirs (also ours): the
# device image has every other dependency (torch, numpy, scipy, pandas, xarray, h5py, matplotlib, ...)
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d .carry/wheels \
    "pyro-ppl==1.9.2" "pyro-api==0.1.2" "arviz==0.23.*" "h5netcdf" "xarray-einstats" "platformdirs"
cp "$MNIST"/*-ubyte.gz .carry/mnist/
ls .carry/wheels
du -sh .carry
