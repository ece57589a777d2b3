#!/bin/sh
# Train the temporal stage (ABAW4 MTL track) over the per-frame features of a frozen backbone: a 4-layer, 4-head
# transformer of width 128 over 100-frame windows (stride 50), 20 epochs (1 warm-up), 32 windows per batch, lr 5e-4.
# The features are extracted once into OUTPUT_DIR/features and reused while the checkpoint and the lists are unchanged.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_temporal.py unchanged:
#   DATA_DIR      [data/ABAW4/MTL]                     data root: cropped_aligned/ and the annotation files
#   BACKBONE_CKPT [runs/emma/checkpoints/best_mtl.pth]  EMMA, CoTEX or MAE checkpoint of this project
#   OUTPUT_DIR    [runs/temporal]                      logs, features, checkpoints, predictions
#   NGPUS         [1]                                  processes on this machine (torchrun when > 1)
# Example: BACKBONE_CKPT=runs/pretrain/checkpoints/last.pth sh shs/train_temporal.sh --temporal tcn
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data/ABAW4/MTL}
BACKBONE_CKPT=${BACKBONE_CKPT:-runs/emma/checkpoints/best_mtl.pth}
OUTPUT_DIR=${OUTPUT_DIR:-runs/temporal}
NGPUS=${NGPUS:-1}

# The recipe goes before the user's arguments, so that a later flag of the user's wins.
set -- --data-dir "$DATA_DIR" --backbone-ckpt "$BACKBONE_CKPT" --output-dir "$OUTPUT_DIR" \
  --temporal transformer --window 100 --stride 50 --layers 4 --heads 4 --width 128 --dropout 0.1 \
  --epochs 20 --warmup-epochs 1 --batch-size 32 --blr 5e-4 --min-lr 1e-6 --weight-decay 0.05 --clip-grad 1.0 \
  --tune-au-thresholds "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_temporal.py "$@"
fi
exec python main_temporal.py "$@"
