#!/bin/sh
# Prepare raw videos: decode, find, track and align every face (112 px crops on the ArcFace template, Aff-Wild2's
# folder names), and extract each video's sound at 16 kHz, into the layout the other stages read (docs/prepare.md).
# A rerun continues where a stopped one left off.
#
# Settings come from the environment (defaults in brackets); extra arguments go to main_prepare.py unchanged:
#   VIDEOS      [data/videos]     a video file or a folder searched at any depth
#   OUTPUT_DIR  [data/prepared]   cropped_aligned/, faces/, audio/, times/, videos.json
#   NGPUS       [1]               processes on this machine (torchrun when > 1; the videos are shared out)
# Example: VIDEOS=/data/C-EXPR-DB/videos OUTPUT_DIR=/data/C-EXPR-DB/prepared sh shs/prepare.sh --preview
set -eu
cd "$(dirname "$0")/.."
VIDEOS=${VIDEOS:-data/videos}
OUTPUT_DIR=${OUTPUT_DIR:-data/prepared}
NGPUS=${NGPUS:-1}

set -- --videos "$VIDEOS" --output-dir "$OUTPUT_DIR" --crop-size 112 --min-face 40 "$@"
if [ "$NGPUS" -gt 1 ]; then
  exec torchrun --nproc_per_node "$NGPUS" main_prepare.py "$@"
fi
exec python main_prepare.py "$@"
