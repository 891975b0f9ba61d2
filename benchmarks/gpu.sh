#!/usr/bin/env bash
# The GPU check on a device machine (benchmarks/gpu.py; benchmarks/README.md "gpu.py").
#
# The device image has python3 3.12 with torch, numpy, pandas, pyarrow, scipy, psutil,
# matplotlib, rich, typer (its package list: /work/.library/device/KINDS.md), but not Ray,
# Optuna, pydantic or soundfile, and it cannot reach a registry. So:
#
#   1. here (pip works):      benchmarks/gpu.sh wheels     -> .whl/ (~59 MiB; ignored by git)
#   2. on the device machine: benchmarks/gpu.sh run        (carry: [".whl"])
#
# `wheels` downloads the missing packages for CPython 3.12 x86_64 without their dependencies
# (each missing one is named below), drops Ray's Java jars (31 MB, unused by Python Ray) and
# transformers' other model families, so the carried tree stays under the device's 64 MiB.
# `run` installs them into /tmp/site, runs benchmarks/gpu.py (~4-6 min on one H200, an
# estimate) and leaves gpu.json and the log in $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-/work/main/.venv/bin/python}
# What the device image lacks: raykd's needs (ray[tune,train], optuna, pydantic, soundfile)
# and theirs, at the versions this project is tested with.
WHEELS=(
  "ray==2.60.0" tensorboardX jsonschema jsonschema-specifications referencing rpds-py
  "optuna==5.1.0" alembic sqlalchemy greenlet mako colorlog
  "pydantic==2.14.4" pydantic-core==2.50.5 annotated-types typing-inspection typing-extensions
  soundfile cffi pycparser
  # the image's transformers (5.17) returns selected hidden_states without the embedding
  # output, which shifts raykd's layer taps: carry the version raykd is tested with
  "transformers==5.25.0"
)

wheels() {
  local exclude
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  rm -rf .whl && mkdir -p .whl
  for w in "${WHEELS[@]}"; do
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "$w"
  done
  # Slimmed, nothing else changed (each RECORD rewritten to match): Ray without ray/jars;
  # transformers without the model families raykd never builds (its lazy import structure
  # is read from the folders present).
  "$PY" - <<'PYEOF'
import glob, os, zipfile

def slim(pattern, drop):
    src = glob.glob(pattern)[0]
    tmp = src + ".slim"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            if drop(item.filename):
                continue
            data = zin.read(item.filename)
            if item.filename.endswith(".dist-info/RECORD"):
                data = b"".join(l for l in data.splitlines(keepends=True) if not drop(l.split(b",")[0].decode()))
            zout.writestr(item, data)
    os.replace(tmp, src)

KEEP_MODELS = {"__init__.py", "auto", "wav2vec2", "wav2vec2_conformer"}
slim(".whl/ray-*.whl", lambda f: f.startswith("ray/jars/"))
slim(".whl/transformers-*.whl",
     lambda f: f.startswith("transformers/models/") and len(f.split("/")) > 2 and f.split("/")[2] not in KEEP_MODELS)
PYEOF
  du -ch .whl/*.whl | tail -1
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled
  export PATH="/tmp/site/bin:$PATH"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  set +e
  timeout 560 python3 benchmarks/gpu.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu.log"
  local rc=${PIPESTATUS[0]}
  cp benchmarks/results/gpu.json "${OUT:-/tmp}/" 2>/dev/null
  exit "$rc"
}

case "${1:-}" in
  wheels) wheels ;;
  run) shift; run "$@" ;;
  *) echo "usage: benchmarks/gpu.sh wheels | run [gpu.py args]" >&2; exit 2 ;;
esac
