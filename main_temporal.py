"""The temporal stage: a sequence model over per-frame features of a frozen backbone, on the ABAW4 MTL track.

Quick look on the CPU with built-in synthetic data (trains the MTL demo first when runs/demo_mtl has no checkpoint,
then extracts features and trains the temporal model; reports its P_MTL beside the backbone's frame-level P_MTL):

    python main_temporal.py --demo

Train on the features of a fine-tuned EMMA (extracted once into <output-dir>/features, reused while the checkpoint
and the frame lists are unchanged), one process:

    python main_temporal.py --data-dir /data/ABAW4/MTL --backbone-ckpt runs/emma/checkpoints/best_mtl.pth \
        --output-dir runs/temporal

On the features of an MAE pretraining checkpoint, which saw no labels (no optimistic training features), with a TCN:

    python main_temporal.py --data-dir /data/ABAW4/MTL --backbone-ckpt runs/pretrain/checkpoints/last.pth \
        --temporal tcn --output-dir runs/temporal_mae

The same on 8 GPUs of one machine (extraction and evaluation are shared out; the files are identical):

    torchrun --nproc_per_node 8 main_temporal.py --data-dir /data/ABAW4/MTL \
        --backbone-ckpt runs/emma/checkpoints/best_mtl.pth --output-dir runs/temporal

Evaluate a checkpoint and write the submission file (the backbone is the one it was trained on):

    python main_temporal.py --eval --ckpt runs/temporal/checkpoints/best_mtl.pth --data-dir /data/ABAW4/MTL \
        --output-dir runs/temporal_eval

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("temporal", __doc__)
