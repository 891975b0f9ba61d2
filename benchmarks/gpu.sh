#!/usr/bin/env bash
# The GPU check on a device machine (benchmarks/gpu.py; benchmarks/README.md "GPU check").
#
# The device image has python3 3.12 with torch, transformers, numpy, pandas, pyarrow, scipy,
# psutil, matplotlib, rich, typer (its package list: /work/.library/device/KINDS.md), but not
# Ray, Optuna, pydantic or soundfile, and it cannot reach a registry. So:
#
#   1. here (pip works):      benchmarks/gpu.sh wheels     -> .whl/ (~55 MB; ignored by git)
#   2. on the device machine: benchmarks/gpu.sh run        (carry: [".whl"])
#
# `wheels` downloads the missing packages for CPython 3.12 x86_64 without their dependencies
# (each missing one is named below) and drops Ray's Java jars (31 MB, unused by Python Ray)
# so the whole carried tree stays under the device's 64 MiB. `run` installs them into
# /tmp/site, runs benchmarks/gpu.py (~4-6 min on one H200) and copies the JSON to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-/work/main/.venv/bin/python}
RAY_VERSION=${RAY_VERSION:-2.60.0}
# What the device image lacks: raykd's needs (ray[tune,train], optuna, pydantic, soundfile)
# and theirs, at the versions this project is tested with.
WHEELS=(
  "ray==$RAY_VERSION" tensorboardX jsonschema jsonschema-specifications referencing rpds-py
  "optuna==5.1.0" alembic sqlalchemy greenlet mako colorlog
  "pydantic==2.14.4" pydantic-core annotated-types typing-inspection
  soundfile cffi pycparser typing-extensions
)

wheels() {
  local exclude; exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  rm -rf .whl && mkdir -p .whl
  for w in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$w"
  done
  # Ray without ray/jars (Java workers): the wheel and its RECORD rewritten, nothing else changed.
  "$PY" - <<'EOF'
import glob, os, zipfile
src = glob.glob(".whl/ray-*.whl")[0]
tmp = src + ".slim"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith("ray/jars/"):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"".join(l for l in data.splitlines(keepends=True) if not l.startswith(b"ray/jars/"))
        zout.writestr(item, data)
os.replace(tmp, src)
EOF
  du -ch .whl/*.whl | tail -1
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
  export PATH="/tmp/site/bin:$PATH"  # ray's own executables (its workers call them)
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  set +e
  timeout 560 python3 benchmarks/gpu.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu.log"
  rc=${PIPESTATUS[0]}
  cp benchmarks/results/gpu.json "${OUT:-/tmp}/" 2>/dev/null
  exit "$rc"
}

case "${1:-}" in
  wheels) wheels ;;
  run) shift; run "$@" ;;
  *) echo "usage: benchmarks/gpu.sh wheels | run [gpu.py args]" >&2; exit 2 ;;
esac
