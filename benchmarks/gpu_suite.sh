#!/usr/bin/env bash
# The GPU suite in one call (docstring of benchmarks/gpu_suite.py): on one H100/H200, or
# --smoke on a CPU. JSON goes to $OUT (or --out DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec python benchmarks/gpu_suite.py "$@"
