"""EMMA on the ABAW4 multi-task learning track: valence/arousal, 8 expressions and 12 action units.

Quick look on the CPU with built-in synthetic data (a few minutes):

    python main_mtl.py --demo

Train the reference recipe (ViT-B/16 from an MAE checkpoint, frozen AffectNet DAN), one process:

    python main_mtl.py --data-dir /data/ABAW4/MTL --mae-ckpt mae_face_pretrain.pth \
        --dan-ckpt affecnet8_epoch5_acc0.6209.pth --output-dir runs/emma

The same on 8 GPUs of one machine (the lr follows the effective batch: blr * batch * accum * world / 256):

    torchrun --nproc_per_node 8 main_mtl.py --data-dir /data/ABAW4/MTL --mae-ckpt mae_face_pretrain.pth \
        --dan-ckpt affecnet8_epoch5_acc0.6209.pth --output-dir runs/emma

Evaluate a checkpoint and write the submission file:

    python main_mtl.py --eval --ckpt runs/emma/checkpoints/best_mtl.pth --data-dir /data/ABAW4/MTL \
        --output-dir runs/emma_eval

The single-task tracks of ABAW2-8 (per-video VA, EXPR and AU files), joined per frame into one EMMA, one
submission file per task (test lists: sample files, or TASK=FILE for a list of video names):

    python main_mtl.py --task va,expr,au --data-dir /data/Aff-Wild2 --mae-ckpt mae_face_pretrain.pth \
        --dan-ckpt affecnet8_epoch5_acc0.6209.pth --output-dir runs/emma_tracks \
        --test-list CVPR_6th_ABAW_VA_test_set_sample.txt CVPR_6th_ABAW_Expr_test_set_sample.txt \
        au=Action_Unit_Detection_Challenge_test_set_release.txt

An ensemble of checkpoints (the mean of their probabilities):

    python main_mtl.py --eval --ckpt A.pth B.pth C.pth --data-dir /data/ABAW4/MTL --output-dir runs/ensemble

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("mtl", __doc__)
