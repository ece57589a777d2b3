"""The affect of every face in your own videos and images: valence, arousal, expression and 12 AUs per frame and
tracked person, with a timeline figure per video and, on request, an annotated copy of the video.

A video, an image or a folder (videos and images found at any depth), with a checkpoint of main_mtl.py (or one of
main_temporal.py, for videos):

    python predict.py interview.mp4 --ckpt runs/emma/checkpoints/best_mtl.pth --output-dir predictions

writes predictions/interview.csv (one row per decoded frame and face; a frame without a face keeps one row) and
predictions/interview_timeline.png; images go to predictions/images.csv. Annotated videos, an ensemble, a checkpoint
from the Hugging Face hub (its local cache; nothing is downloaded with HF_HUB_OFFLINE=1):

    python predict.py videos/ photos/ --annotate --ckpt A.pth B.pth --output-dir predictions
    python predict.py interview.mp4 --ckpt hf-hub:owner/repo/best_mtl.pth --output-dir predictions

The checkpoint brings the model, its input size, its AU thresholds and the smoothing windows its training run used
(main_mtl.py --smooth-va, --smooth-expr): each track's VA and expression probabilities are averaged over neighbouring
frames as main_mtl.py --eval does (--no-smoothing: each frame's own outputs). A temporal checkpoint reads its frame
model at the path it records, else a file of that name beside it (or in its hub folder), else --backbone-ckpt:

    python predict.py interview.mp4 --ckpt temporal.pth --backbone-ckpt emma.pth --output-dir predictions

The same from Python (docs/predict.md):

    from engine.tasks.predict import Predictor
    table = Predictor("best_mtl.pth").video("interview.mp4")   # a pandas.DataFrame

An input that cannot be read is named and skipped; the others are done and the run exits with status 2.
"""

from engine.tasks.predict.cli import main

if __name__ == "__main__":
    main(__doc__)
