#!/bin/sh
# Pretrain an MAE on face images with MAE's recipe (He et al. 2022, facebookresearch/mae PRETRAIN.md): ViT-B/16,
# decoder 512 x 8 blocks x 16 heads, mask 0.75, norm_pix_loss, 800 epochs (40 warm-up), batch 64 per process with
# EFFECTIVE_BATCH / (64 x processes) accumulated micro-batches, blr 1.5e-4 (lr = blr x effective batch / 256),
# AdamW (0.9, 0.95), weight decay 0.05, RandomResizedCrop(0.2, 1) and flip.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_pretrain.py unchanged:
#   DATA_DIR        [data/celeba/img_align_celeba]  image folders, searched at any depth (several: space-separated)
#   OUTPUT_DIR      [runs/pretrain]
#   NGPUS           [1]      processes on this machine (torchrun when > 1)
#   EFFECTIVE_BATCH [4096]   images per optimizer update over all processes
# Example: NGPUS=8 DATA_DIR="/data/celeba/img_align_celeba /data/ABAW4/MTL/cropped_aligned" sh shs/pretrain_MAE.sh
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data/celeba/img_align_celeba}
OUTPUT_DIR=${OUTPUT_DIR:-runs/pretrain}
NGPUS=${NGPUS:-1}
EFFECTIVE_BATCH=${EFFECTIVE_BATCH:-4096}
ACCUM=$(( EFFECTIVE_BATCH / (64 * NGPUS) ))
if [ "$ACCUM" -lt 1 ]; then
  ACCUM=1
fi

# DATA_DIR is left unquoted on purpose: several space-separated folders become several arguments.
# shellcheck disable=SC2086
set -- --data-dir $DATA_DIR --output-dir "$OUTPUT_DIR" --vit base --img-size 224 --decoder-dim 512 \
  --decoder-depth 8 --decoder-heads 16 --mask-ratio 0.75 --norm-pix-loss --epochs 800 --warmup-epochs 40 \
  --batch-size 64 --accum-iter "$ACCUM" --blr 1.5e-4 --min-lr 0 --weight-decay 0.05 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_pretrain.py "$@"
fi
exec python main_pretrain.py "$@"
