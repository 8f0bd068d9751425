#!/usr/bin/env bash
# Downloads, into .whl/ (ignored by git), the wheels that the lent GPU
# machine's image lacks, for its Python (3.12, x86-64 manylinux). The device
# reaches no package registry, so `run` carries .whl and session.sh
# installs from it. Run here, with PyPI reachable:
#   bash experiments/accelerator/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
# stn_jax's own dependencies missing there, then theirs (the image has
# absl-py, etils, numpy, protobuf, psutil, pyarrow, requests, tqdm, wrapt,
# cloudpickle, pyyaml, packaging, typing-extensions).
PACKAGES=(
  ml_collections==1.1.0 tensorflow-datasets==4.9.10 grain==0.2.18
  array_record==0.8.6 tensorboardX==2.6.5 importlib_resources==7.1.0
  dm-tree==0.1.10 immutabledict==4.3.1 promise==2.3 simple-parsing==0.1.9
  docstring-parser tensorflow-metadata==1.21.0 googleapis-common-protos
  termcolor==3.3.0 toml==0.10.2 portpicker
)
PLATFORMS=()
for n in 17 24 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
for package in "${PACKAGES[@]}"; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "$package" 2>/dev/null ||
    # No wheel published (promise is an sdist): build one. Pure Python, so
    # the wheel built here installs there.
    python3 -m pip wheel --quiet --no-deps -w .whl "$package"
done
du -sh .whl
