#!/bin/sh
# Train the video-level stage on a whole-video track (TRACK: emi, ah or ah_frame): the per-frame features of a frozen
# backbone on 32 face crops per video, the sound as log-mel windows, the organisers' pre-extracted features where the
# track's files hold them; a 2-layer, 4-head transformer of width 128 over all streams with attention pooling,
# 30 epochs (2 warm-up), 32 videos per batch, lr 1e-3, streams dropped from 20% of the training samples.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_video.py unchanged:
#   TRACK         [emi]                                emi, ah (per video) or ah_frame (per frame)
#   DATA_DIR      [data/Hume-Vidmimic2]                the track's files as released (docs/video.md)
#   BACKBONE_CKPT [runs/emma/checkpoints/best_mtl.pth]  EMMA, CoTEX or MAE checkpoint of this project
#   AUDIO         [logmel]                             logmel, none, or a speech encoder (folder or cached hub id)
#   OUTPUT_DIR    [runs/$TRACK]                        logs, features, checkpoints, the submission file
#   NGPUS         [1]                                  processes on this machine (torchrun when > 1)
# Example: TRACK=ah DATA_DIR=/data/BAH sh shs/train_video.sh --text weights/bert-base-uncased
set -eu
cd "$(dirname "$0")/.."
TRACK=${TRACK:-emi}
DATA_DIR=${DATA_DIR:-data/Hume-Vidmimic2}
BACKBONE_CKPT=${BACKBONE_CKPT:-runs/emma/checkpoints/best_mtl.pth}
AUDIO=${AUDIO:-logmel}
OUTPUT_DIR=${OUTPUT_DIR:-runs/$TRACK}
NGPUS=${NGPUS:-1}

# The recipe goes before the user's arguments, so that a later flag of the user's wins.
set -- --track "$TRACK" --data-dir "$DATA_DIR" --backbone-ckpt "$BACKBONE_CKPT" --audio "$AUDIO" \
  --output-dir "$OUTPUT_DIR" --frames-per-video 32 --layers 2 --heads 4 --width 128 --dropout 0.1 \
  --stream-dropout 0.2 --epochs 30 --warmup-epochs 2 --batch-size 32 --blr 1e-3 --min-lr 1e-6 \
  --weight-decay 0.05 --clip-grad 1.0 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_video.py "$@"
fi
exec python main_video.py "$@"
