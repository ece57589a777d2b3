#!/bin/sh
# Train masked CoTEX with a 7-class head on compound expression image folders (one folder per compound, e.g. RAF-DB's
# compound set), then predict the C-EXPR-DB test videos' frames: LSD's fine-tuning recipe (2 ViT-B/16 from one MAE
# checkpoint, each dropping 75% of the patches, CE + 100 x Jensen-Shannon, 6 epochs, 5 warm-up, accum 4, lr = blr =
# 5e-4). Prepare the test videos first (python main_prepare.py --videos VIDEOS --output-dir "$DATA_DIR") and put the
# sample file CVPR_6th_ABAW_CE_test_set_sample.txt in DATA_DIR.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_ce.py unchanged:
#   DATA_DIR    [data/C-EXPR-DB]              cropped_aligned/ from main_prepare.py and the sample file
#   TRAIN_DIR   [data/RAF-DB/compound/train]  compound image folders for training
#   VAL_DIR     [data/RAF-DB/compound/test]   compound image folders for validation ("none": no validation)
#   MAE_CKPT    [weights/mae_face_pretrain.pth]  MAE-pretrained ViT-B/16 (several paths, space-separated: one per ViT)
#   OUTPUT_DIR  [runs/ce]
#   NGPUS       [1]                           processes on this machine (torchrun when > 1)
# Example: NGPUS=4 DATA_DIR=/data/C-EXPR-DB sh shs/train_CE.sh --epochs 10
# Zero-shot from an EMMA checkpoint instead: python main_ce.py --eval --ckpt runs/emma/checkpoints/best_expr.pth
#   --data-dir "$DATA_DIR" --output-dir runs/ce_zero_shot
set -eu
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-data/C-EXPR-DB}
TRAIN_DIR=${TRAIN_DIR:-data/RAF-DB/compound/train}
VAL_DIR=${VAL_DIR:-data/RAF-DB/compound/test}
MAE_CKPT=${MAE_CKPT:-weights/mae_face_pretrain.pth}
OUTPUT_DIR=${OUTPUT_DIR:-runs/ce}
NGPUS=${NGPUS:-1}

# MAE_CKPT is left unquoted on purpose: several space-separated paths become several arguments.
# shellcheck disable=SC2086
set -- --data-dir "$DATA_DIR" --train-dir "$TRAIN_DIR" --val-dir "$VAL_DIR" --mae-ckpt $MAE_CKPT \
  --output-dir "$OUTPUT_DIR" --vit base --vit-num 2 --mask-ratio 0.75 --epochs 6 --warmup-epochs 5 --accum-iter 4 \
  --blr 5e-4 --min-lr 1e-6 --layer-decay 0.65 --weight-decay 0.05 --drop-path 0.1 --clip-grad 0.05 --lambda-ce 1 \
  --lambda-js 100 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_ce.py "$@"
fi
exec python main_ce.py "$@"
