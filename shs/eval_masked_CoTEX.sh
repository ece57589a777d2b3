#!/bin/sh
# Evaluate a masked-CoTEX checkpoint (this project's or an original {'state_dicts': [...]} file) on the real
# validation images and write the LSD submission file test_predictions.txt.
#   CKPT        [runs/cotex/checkpoints/best_f1.pth]
#   DATA_DIR    [data/ABAW4/LSD]            must hold LSD_Challenge_test_set_release.txt (or pass --test-list)
#   TEST_DIR    [test_set_real_images]      folder of the test images, under DATA_DIR or absolute
#   OUTPUT_DIR  [runs/cotex_eval]
#   NGPUS       [1]
set -eu
cd "$(dirname "$0")/.."
CKPT=${CKPT:-runs/cotex/checkpoints/best_f1.pth}
DATA_DIR=${DATA_DIR:-data/ABAW4/LSD}
TEST_DIR=${TEST_DIR:-test_set_real_images}
OUTPUT_DIR=${OUTPUT_DIR:-runs/cotex_eval}
NGPUS=${NGPUS:-1}

set -- --eval --ckpt "$CKPT" --data-dir "$DATA_DIR" --test-dir "$TEST_DIR" --output-dir "$OUTPUT_DIR" "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_lsd.py "$@"
fi
exec python main_lsd.py "$@"
