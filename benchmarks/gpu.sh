#!/usr/bin/env bash
# One prepared call on a GPU machine (repository root as the working directory):
#   bash benchmarks/gpu.sh [benchmarks/gpu.py options]
# Installs the Python packages carried as wheels in .whl/ (the machine has JAX with CUDA, numpy, h5py,
# scipy, matplotlib; not Keras, uproot, awkward, pydantic, python-blosc), runs benchmarks/gpu.py with the
# JAX backend on the reference samples in .gpu-data/ (ttbar_A.root, ttbar_B.root), and leaves
# gpu.json and nvidia-smi.csv in $OUT (or /tmp/payload-gpu-out).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c "import keras, uproot, awkward, pydantic, blosc" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export KERAS_BACKEND="${KERAS_BACKEND:-jax}" PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "gpu.sh: nvidia-smi not found: the GPU parts are skipped"
exec python3 benchmarks/gpu.py --data "${GPU_DATA:-.gpu-data}" "$@"
