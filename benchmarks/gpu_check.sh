#!/bin/sh
# What only a GPU can show, in at most about 8 minutes on one GPU; one JSON line per measurement on stdout:
#   the suite's GPU tests (pytest -m gpu); EMMA ViT-B and masked CoTEX 2 x ViT-B (mask 0.75) training img/s in bf16 at
#   the reference batches (100 and 64), and MAE ViT-B/16 pretraining at batch 256, with MFU and peak memory, eager and
#   --compile; the MTL data pipeline with 8 workers feeding 224 px batches to the GPU, against the training speed it
#   must keep up with; a --demo-sized end-to-end MTL run on the GPU; main_prepare.py frames/s on a 640 x 360 video
#   beside decoding + facenet-pytorch's MTCNN defaults batched 16 (goal: >= 300 frames/s).
# Usage: sh benchmarks/gpu_check.sh [WORK_DIR]      (WORK_DIR, default a new temporary folder, keeps the logs)
set -eu
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: no CUDA GPU is visible to PyTorch here; nothing was measured" >&2
  exit 1
fi
WORK=${1:-$(mktemp -d)}
mkdir -p "$WORK"
echo "gpu_check: logs in $WORK" >&2

# measure NAME COMMAND...: run a benchmark into $WORK/NAME.log and print its final JSON line; a failure prints a line
# saying so and the remaining measurements still run
measure() {
  log_name=$1
  shift
  if "$@" > "$WORK/$log_name.log" 2>&1; then
    grep '^{' "$WORK/$log_name.log" | tail -n 1
  else
    echo "{\"check\": \"$log_name\", \"failed\": true, \"log\": \"$WORK/$log_name.log\"}"
  fi
}

python -m pytest -q -m gpu -p no:cacheprovider tests > "$WORK/pytest_gpu.log" 2>&1 && rc=0 || rc=$?
python - "$WORK/pytest_gpu.log" "$rc" <<'PY'
import json, sys
lines = open(sys.argv[1]).read().strip().splitlines()
print(json.dumps({"check": "pytest -m gpu", "exit_code": int(sys.argv[2]), "summary": lines[-1] if lines else ""}))
PY

for compile in "" "--compile"; do
  name=${compile:+_compiled}
  measure "emma$name" python benchmarks/bench.py train --model emma --vit base --batch-size 100 --steps 10 --warmup 3 \
    --precision bf16 --device cuda $compile
  measure "cotex$name" python benchmarks/bench.py train --model cotex --vit base --batch-size 64 --mask-ratio 0.75 \
    --steps 10 --warmup 3 --precision bf16 --device cuda $compile
  # MAE pretraining, ViT-B/16 at batch 256 (goal: above 40% MFU in bf16)
  measure "mae$name" python benchmarks/bench.py pretrain --vit base --batch-size 256 --steps 10 --warmup 3 \
    --precision bf16 --device cuda $compile
done

# the temporal stage's sound through a Wav2Vec2-base-sized encoder in bf16 (goal: Aff-Wild2's ~30 h, aff_wild2_s, in
# under 600 s)
measure audio python benchmarks/bench.py audio --encoder wav2vec2-base --seconds 900 --batch-size 16 --device cuda \
  --repeat 3
python -m datasets.synthetic mtl "$WORK/data" --videos 80 --frames 50 > "$WORK/data_gen.log" 2>&1
measure data python benchmarks/bench.py data --data-dir "$WORK/data" --batch-size 100 --workers 8 --img-size 224 \
  --device cuda --batches 60
python - "$WORK/data.log" "$WORK/emma.log" <<'PY'
import json, sys
def last(path):
    return json.loads(([line for line in open(path) if line.startswith("{")] or ["{}"])[-1])
data, train = last(sys.argv[1]), last(sys.argv[2])
if "img_per_s" not in data or "img_per_s" not in train:
    sys.exit(0)  # one of the two failed, and said so above
print(json.dumps({"check": "data pipeline vs EMMA bf16 training", "data_img_per_s": data["img_per_s"],
                  "train_img_per_s": train["img_per_s"], "gpu_waits_for_data": data["img_per_s"] < train["img_per_s"]}))
PY

start=$(date +%s)
ABAW_DEMO_DATA="$WORK/demo_data" python main_mtl.py --demo --device cuda --output-dir "$WORK/demo_mtl" \
  > "$WORK/demo_mtl.log" 2>&1 && rc=0 || rc=$?
end=$(date +%s)
python - "$WORK/demo_mtl/test_metrics.json" "$rc" "$((end - start))" <<'PY'
import json, os, sys
path, rc, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
record = {"check": "main_mtl.py --demo --device cuda", "exit_code": rc, "wall_s": seconds}
if os.path.isfile(path):
    record["test_p_mtl"] = round(json.load(open(path))["p_mtl"], 4)
print(json.dumps(record))
PY

# raw video preparation on the GPU: decode, detect (MTCNN batched), track, align, write (goal: >= 300 frames/s)
measure prepare python benchmarks/bench.py prepare --device cuda --frames 480 --batch-size 32 --warmup 1 --repeat 2

# predict.py end to end on a 640 x 360 video with EMMA ViT-B in bf16: decode, detect, track, align, predict every face
# (goal: >= 300 frames/s), against main_prepare.py alone on the same video
measure predict python benchmarks/bench.py predict --model base --device cuda --precision bf16 --frames 480 \
  --warmup 1 --repeat 2
