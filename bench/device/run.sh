#!/usr/bin/env bash
# The device benchmark in one call (bench/device/measure.py says what it measures).
#
#   bash bench/device/run.sh [--quick] [measure.py options]
#
# On the device machine: its own python3 (JAX with CUDA, NumPyro, optax), this project on
# PYTHONPATH (not installed), and the wheels it lacks (`make device-wheels`, carried as .whl)
# installed into /tmp/site. Here: the venv's python; `JAX_PLATFORMS=cpu` for the CPU alone.
# Results go to $OUT if set (the device machine's output folder), else bench/results/.
# The run stops itself after DEVICE_BENCH_TIMEOUT_S seconds (default 350; results are written
# after every section, so a run cut short keeps what it measured).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
# What this project needs that the device machine's image lacks (KINDS.md): funsor and its
# makefun, orjson, and NumPyro at the project's pin. Installed only where they are missing.
if ! "$PYTHON" -c 'import funsor, makefun, orjson' 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl into /tmp/site"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "run.sh: $PYTHON lacks funsor/makefun/orjson and there is no .whl folder:" \
      "run 'make device-wheels' here and carry .whl" >&2
    exit 1
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# As the service runs on a GPU (docs/deployment.md, "Running on a GPU"): memory taken as needed.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

exec timeout --signal=KILL "${DEVICE_BENCH_TIMEOUT_S:-350}" "$PYTHON" -m bench.device.measure "$@"
