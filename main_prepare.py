"""Raw videos in, the Aff-Wild2 layout out: every face found, tracked and aligned, and the sound at 16 kHz.

For each video (a file, or every video file in a folder at any depth) it writes aligned face crops per tracked person
(``cropped_aligned/<video>/``, ``<video>_left/`` and ``<video>_right/`` for two people, ``<video>_<k>/`` for more), a
CSV of every frame's faces, the frame times, a 16 kHz mono WAV and ``videos.json`` (docs/prepare.md). Faces come from
facenet-pytorch's MTCNN, whose weights ship in its wheel: nothing is downloaded.

Render a few synthetic videos, prepare them and score the result against the truth (about a minute on a CPU):

    python main_prepare.py --demo

One process (a GPU when there is one, else the CPU):

    python main_prepare.py --videos /data/C-EXPR-DB/videos --output-dir /data/C-EXPR-DB/prepared

The same with 8 processes on 8 GPUs (the videos are shared out; the files are the same as with one process):

    torchrun --nproc_per_node 8 main_prepare.py --videos /data/C-EXPR-DB/videos --output-dir /data/C-EXPR-DB/prepared

Only the sound and the frame times of videos whose crops the organisers give (Aff-Wild2):

    python main_prepare.py --audio-only --videos /data/Aff-Wild2/videos --output-dir /data/Aff-Wild2

An interrupted run continues with the same command: finished videos are skipped, the one in progress is redone.
"""

from engine.tasks.prepare import main

if __name__ == "__main__":
    main(__doc__)
