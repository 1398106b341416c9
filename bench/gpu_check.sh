#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): UNet on real ISIC, YOLOv1 as published, R-CNN and YOLOv1 speed, torchrun
# with 2 GPUs; under 10 minutes on one GPU. From anywhere:
#
#   bench/gpu_check.sh [--dry-run] [--data ../shared/realdata] [--out reports/gpu_check]
#
# Python: $PYTHON, else .venv/bin/python, else python3 (a GPU machine's own PyTorch). Wheels in ./wheels/ are
# installed first (--no-deps): carry pycocotools and opencv-contrib-python-headless there for a machine whose
# image lacks them. --dry-run runs every step on CPU with tiny synthetic data (what the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if compgen -G "wheels/*.whl" >/dev/null; then
  "$PY" -m pip install --quiet --no-deps wheels/*.whl
fi
"$PY" - <<'PYEOF'
import importlib.util, sys
need = {"torch": "torch", "torchvision": "torchvision", "cv2": "opencv-contrib-python-headless",
        "pycocotools": "pycocotools", "sklearn": "scikit-learn", "pandas": "pandas", "tqdm": "tqdm", "PIL": "pillow"}
missing = [pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None]
if not missing:
    import cv2
    if not hasattr(cv2, "ximgproc"):
        missing.append("opencv-contrib-python-headless (cv2 has no ximgproc: selective search)")
if missing:
    sys.exit("ERROR: gpu_check needs " + ", ".join(missing) + "; put their wheels in ./wheels/")
PYEOF
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-600}" "$PY" -m bench.gpu_check "$@"
