#!/usr/bin/env bash
# The wheel folder for scripts/gpu_bench.sh on a GPU machine without network that has jax,
# flax, optax, orbax-checkpoint and torch but not the small pure-Python packages below. Run it
# where pip reaches PyPI, in the repository root, and copy .whl/ along with the checkout:
#
#   bash scripts/gpu_wheels.sh          # -> .whl/ (git-ignored)
#
# ml_collections (configs, flags) needs absl-py and PyYAML; tensorboardX (jaxbud.metrics) needs
# numpy, packaging and protobuf: such a machine has those, so --no-deps. The wheels are for
# Python 3.12; change --python-version for another.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST="${1:-.whl}"
mkdir -p "$DEST"
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST" \
    ml_collections==1.1.0 tensorboardX==2.6.5
ls -l "$DEST"
