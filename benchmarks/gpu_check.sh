#!/usr/bin/env bash
# The GPU proof on a bare GPU machine, in one command: install what is missing, then run gpu_check.py.
#
#   bash benchmarks/gpu_check.sh wheels          # beforehand, on a machine that reaches PyPI: the pure-Python
#                                                #   wheels (sam2 1.1.0 + what it imports) into .gpu-wheels/
#   bash benchmarks/gpu_check.sh run OUT [ARGS]  # on the GPU machine: gpu_check.py OUT ARGS (e.g. --quick)
#
# `run` keeps the machine's own python and its CUDA build of torch (a fresh venv would hide it, or download
# 2 GB of torch): it installs only the missing packages, with --no-deps, into a folder put on PYTHONPATH —
# from .gpu-wheels/ when it is there (a machine that reaches no registry), else from the registry. The
# official sam2 is built without its CUDA extension (SAM2_BUILD_CUDA=0) and without torchvision (gpu_check.py
# puts the parity tests' stand-in in its place). Without a torch at all, a venv is made and torch is
# installed from the registry. napari-sam2 itself runs from src/ (no install, no napari needed).
# Env: PYTHON (default python3), GPU_CHECK_TIMEOUT (seconds, default 420), GPU_CHECK_SITE (install folder).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
# module to import → what pip installs when it is missing (the official's imports and ours beyond the image)
NEEDED="hydra:hydra-core<1.4 omegaconf:omegaconf<2.4 antlr4:antlr4-python3-runtime==4.9.3 iopath:iopath
portalocker:portalocker tqdm:tqdm yaml:pyyaml PIL:pillow scipy:scipy platformdirs:platformdirs"

if [ "${1:-}" = wheels ]; then
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    pkgs=$(for pair in $NEEDED; do echo "${pair#*:}"; done | grep -v -e '^scipy' -e '^pillow' -e '^pyyaml')
    # sam2's build needs torch (its setup.py imports it): build here, with this python's torch, no extension
    SAM2_BUILD_CUDA=0 "${PYTHON:-python3}" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" sam2==1.1.0 $pkgs
    ls -l "$WHEELS"
    echo "carry $WHEELS to the GPU machine beside the working tree"
    exit 0
fi
[ "${1:-}" = run ] && [ $# -ge 2 ] || { sed -n '2,6p' "$0"; exit 2; }
OUT=$2
shift 2
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
t0=$SECONDS
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/napari-sam2-gpu-site}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "no torch for $PY: a venv with torch from the registry"
    "$PY" -m venv /tmp/napari-sam2-gpu-venv
    PY=/tmp/napari-sam2-gpu-venv/bin/python
    "$PY" -m pip install -q torch numpy setuptools
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"

missing=()
for pair in $NEEDED; do
    "$PY" -c "import ${pair%%:*}" 2>/dev/null || missing+=("${pair#*:}")
done
"$PY" -c "import sam2" 2>/dev/null || missing+=(sam2==1.1.0)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing into $SITE: ${missing[*]}"
    from=()
    [ -d "$WHEELS" ] && from=(--no-index --find-links "$WHEELS")
    SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-deps --no-build-isolation --no-compile --upgrade \
        --target "$SITE" "${from[@]}" "${missing[@]}" || echo "install failed: the checks that need it are skipped"
fi
echo "ready after $((SECONDS - t0)) s"

export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
timeout "${GPU_CHECK_TIMEOUT:-420}" "$PY" benchmarks/gpu_check.py "$OUT" "$@" || status=$?
echo "gpu_check.py exit $status after $((SECONDS - t0)) s in all (124: killed by the timeout)"
exit $status
