"""The video-level stage: one prediction per video (Emotional Mimicry Intensity, Ambivalence/Hesitancy) or per frame
of a whole video (A/H per frame), from the video's face frames, sound, the organisers' pre-extracted features and
transcripts (docs/video.md).

Quick look on the CPU with built-in synthetic data (trains the MTL demo first when runs/demo_mtl has no checkpoint,
whose per-frame features are the face stream; the sound is a log-mel stream):

    python main_video.py --demo --track emi
    python main_video.py --demo --track ah

Emotional Mimicry Intensity on the organisers' files (train_split.csv, face_images/, audio/, vit/, wav2vec2/), over
the features of a fine-tuned EMMA, with a speech encoder and their pre-extracted features:

    python main_video.py --track emi --data-dir /data/Hume-Vidmimic2 \
        --backbone-ckpt runs/emma/checkpoints/best_mtl.pth --audio facebook/wav2vec2-base \
        --track-features vit,wav2vec2 --output-dir runs/emi

Ambivalence/Hesitancy per video (split/*.txt, cropped-aligned-faces/, transcription/), with a text encoder over the
transcripts, on 8 GPUs:

    torchrun --nproc_per_node 8 main_video.py --track ah --data-dir /data/BAH \
        --backbone-ckpt runs/emma/checkpoints/best_mtl.pth --audio logmel --text bert-base-uncased \
        --output-dir runs/ah

Evaluate a checkpoint and write the submission file (the streams are the ones it was trained on):

    python main_video.py --track emi --eval --ckpt runs/emi/checkpoints/best_pearson.pth \
        --data-dir /data/Hume-Vidmimic2 --output-dir runs/emi_eval

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("video", __doc__)
