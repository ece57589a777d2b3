"""Compound Expression track (C-EXPR-DB): 7 compound expressions per frame of raw videos, macro F1.

Quick look on the CPU with built-in synthetic data (synthetic videos prepared by main_prepare.py's stage, a small
model trained on compound image folders, its submission scored against constant predictions):

    python main_ce.py --demo

Prepare the test videos (face crops in DATA/cropped_aligned/<video>/), and put the sample file beside them:

    python main_prepare.py --videos /data/C-EXPR-DB/videos --output-dir data/ce
    cp CVPR_6th_ABAW_CE_test_set_sample.txt data/ce/

Zero-shot from an EMMA checkpoint of main_mtl.py (each compound from its two basic expressions):

    python main_ce.py --eval --ckpt runs/emma/checkpoints/best_expr.pth --data-dir data/ce --output-dir runs/ce_zero

Train masked CoTEX on compound image folders (one per class, e.g. RAF-DB's compound set), one process:

    python main_ce.py --data-dir data/ce --train-dir /data/RAF-DB/compound/train --val-dir /data/RAF-DB/compound/test \
        --mae-ckpt mae_face_pretrain.pth --output-dir runs/ce

The same on 8 GPUs of one machine:

    torchrun --nproc_per_node 8 main_ce.py --data-dir data/ce --train-dir /data/RAF-DB/compound/train \
        --val-dir /data/RAF-DB/compound/test --mae-ckpt mae_face_pretrain.pth --output-dir runs/ce

Evaluate a checkpoint and write the submission (test_predictions.txt, the sample file's frames in its order):

    python main_ce.py --eval --ckpt runs/ce/checkpoints/best_f1.pth --data-dir data/ce --output-dir runs/ce_eval

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("ce", __doc__)
