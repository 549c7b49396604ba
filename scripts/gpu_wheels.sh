#!/usr/bin/env bash
# The wheel folder for scripts/gpu_bench.sh: the pure-Python packages jaxbud needs that the GPU
# machine lacks (it has no network). Run it here, where pip reaches PyPI, in the repository
# root of the checkout the device tool sends:
#
#   bash scripts/gpu_wheels.sh          # -> .whl/ (git-ignored; carry it: carry=['.whl'])
#
# ml_collections (configs, flags) needs absl-py and PyYAML; tensorboardX (jaxbud.metrics) needs
# numpy, packaging and protobuf: the machine has all of those, so --no-deps. Everything else
# jaxbud's GPU stages import (jax 0.11.2 with the CUDA 13 plugin, flax, optax, orbax-checkpoint,
# etils, absl-py, numpy, torch) is on the machine already.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${1:-.whl}"
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" \
    ml_collections==1.1.0 tensorboardX==2.6.5
ls -l "$DEST"
