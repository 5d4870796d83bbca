#!/usr/bin/env bash
# Reproduces the embedded default checkpoints (export/reid_export/assets/*_tiny.safetensors):
# the synthetic benchmark's train split (preset "train", seed 0), then the tiny HAMoBE and
# KeyRe-ID presets trained on it. On a GPU this takes a few minutes; on a CPU, hours.
#   tools/train_defaults.sh [OUT_DIR] [extra reid-export train options...]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/defaults}; shift || true
export PYTHONUNBUFFERED=1
python3 -m reid_export.synth "$out/bench" --preset train --seed 0 --quiet
for arch in hamobe keyreid; do
  python3 -m reid_export.cli train --arch "$arch" --preset tiny --data "$out/bench" \
    --out "$out/${arch}_tiny.safetensors" "$@"
done
