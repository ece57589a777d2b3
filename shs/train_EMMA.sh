#!/bin/sh
# Train EMMA (MTL track) with the reference recipe: ViT-B/16 from an MAE checkpoint, frozen AffectNet DAN,
# 30 epochs (5 warm-up), batch 100 x accum 4 per process, blr 5e-4, layer decay 0.65.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_mtl.py unchanged:
#   DATA_DIR    [data/ABAW4/MTL]            data root: cropped_aligned/ and the annotation files
#   MAE_CKPT    [weights/mae_face_pretrain.pth]  MAE-pretrained ViT-B/16
#   DAN_CKPT    [weights/affecnet8_epoch5_acc0.6209.pth]  AffectNet-pretrained DAN
#   OUTPUT_DIR  [runs/emma]                 logs, checkpoints, predictions
#   NGPUS       [1]                         processes on this machine (torchrun when > 1)
# Example: NGPUS=8 DATA_DIR=/data/ABAW4/MTL sh shs/train_EMMA.sh --epochs 20
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data/ABAW4/MTL}
MAE_CKPT=${MAE_CKPT:-weights/mae_face_pretrain.pth}
DAN_CKPT=${DAN_CKPT:-weights/affecnet8_epoch5_acc0.6209.pth}
OUTPUT_DIR=${OUTPUT_DIR:-runs/emma}
NGPUS=${NGPUS:-1}

# The recipe goes before the user's arguments, so that a later flag of the user's wins.
set -- --data-dir "$DATA_DIR" --mae-ckpt "$MAE_CKPT" --dan-ckpt "$DAN_CKPT" --output-dir "$OUTPUT_DIR" \
  --vit base --epochs 30 --warmup-epochs 5 --batch-size 100 --accum-iter 4 --blr 5e-4 --min-lr 1e-6 \
  --layer-decay 0.65 --weight-decay 0.05 --drop-path 0.1 --clip-grad 0.05 --va-lr 1e-4 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_mtl.py "$@"
fi
exec python main_mtl.py "$@"
