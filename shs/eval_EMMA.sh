#!/bin/sh
# Evaluate an EMMA checkpoint (this project's or the authors' released file) on validation and write the MTL
# submission file test_predictions.txt.
#   CKPT        [runs/emma/checkpoints/best_mtl.pth]
#   DATA_DIR    [data/ABAW4/MTL]            must hold MTL_Challenge_test_set_release.txt (or pass --test-list)
#   OUTPUT_DIR  [runs/emma_eval]
#   NGPUS       [1]
# Extra arguments go to main_mtl.py, e.g. --tune-au-thresholds --smooth-va auto (authors' files: --vit base).
set -eu
cd "$(dirname "$0")/.."
CKPT=${CKPT:-runs/emma/checkpoints/best_mtl.pth}
DATA_DIR=${DATA_DIR:-data/ABAW4/MTL}
OUTPUT_DIR=${OUTPUT_DIR:-runs/emma_eval}
NGPUS=${NGPUS:-1}

set -- --eval --ckpt "$CKPT" --data-dir "$DATA_DIR" --output-dir "$OUTPUT_DIR" "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_mtl.py "$@"
fi
exec python main_mtl.py "$@"
