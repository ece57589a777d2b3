#!/bin/sh
# Train masked CoTEX (LSD track) with the reference recipe: 2 ViT-B/16 from one MAE checkpoint, each dropping 75% of
# the patches, CE + 100 x Jensen-Shannon, 6 epochs (5 warm-up), batch 64 * int(1/(1-mask)) per process, accum 4,
# lr = blr = 5e-4 (add --scale-lr to scale it by the batch).
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_lsd.py unchanged:
#   DATA_DIR    [data/ABAW4/LSD]            training_set_synthetic_images/, validation_set_real_images/, test list
#   MAE_CKPT    [weights/mae_face_pretrain.pth]  MAE-pretrained ViT-B/16 (several paths, space-separated: one per ViT)
#   OUTPUT_DIR  [runs/cotex]
#   NGPUS       [1]                         processes on this machine (torchrun when > 1)
#   MASK_RATIO  [0.75]
# Example: NGPUS=4 DATA_DIR=/data/ABAW4/LSD sh shs/train_masked_CoTEX.sh --test-dir test_images
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data/ABAW4/LSD}
MAE_CKPT=${MAE_CKPT:-weights/mae_face_pretrain.pth}
OUTPUT_DIR=${OUTPUT_DIR:-runs/cotex}
NGPUS=${NGPUS:-1}
MASK_RATIO=${MASK_RATIO:-0.75}

# MAE_CKPT is left unquoted on purpose: several space-separated paths become several arguments.
# shellcheck disable=SC2086
set -- --data-dir "$DATA_DIR" --mae-ckpt $MAE_CKPT --output-dir "$OUTPUT_DIR" --vit base --vit-num 2 \
  --mask-ratio "$MASK_RATIO" --epochs 6 --warmup-epochs 5 --accum-iter 4 --blr 5e-4 --min-lr 1e-6 \
  --layer-decay 0.65 --weight-decay 0.05 --drop-path 0.1 --clip-grad 0.05 --lambda-ce 1 --lambda-js 100 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_lsd.py "$@"
fi
exec python main_lsd.py "$@"
