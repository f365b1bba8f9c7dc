#!/usr/bin/env bash
# Run HERE, before a device call: the pure-Python and compiled wheels nas needs that the GPU machine lacks,
# for its Python 3.12 on x86-64, into .whl/ at the repo root (ignored through .git/info/exclude; the device
# call carries it). That machine has JAX, PyTorch, numpy, pandas, scikit-learn, rich, typer, PyYAML, h5py,
# ml-dtypes and absl-py, but no Keras, Optuna or pydantic. Versions are this venv's, so both sides match.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
PKGS="keras namex optree optuna alembic sqlalchemy mako colorlog pydantic pydantic-core annotated-types typing-inspection"
for pkg in $PKGS; do
  version=$(.venv/bin/python -m pip show "$pkg" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$version" ] || { echo "error: $pkg is not in .venv (run make .venv/.installed-test)"; exit 2; }
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$pkg==$version"
done
du -sh .whl
echo "carry: .whl and data/fashion-mnist (make data first); run: bash bench/gpu_check.sh"
