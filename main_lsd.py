"""Masked CoTEX on the ABAW4 learning-from-synthetic-data track: 6 expressions, real-image validation and test.

Quick look on the CPU with built-in synthetic data (a few minutes):

    python main_lsd.py --demo

Train the reference recipe (2 ViT-B/16 from one MAE checkpoint, mask ratio 0.75), one process:

    python main_lsd.py --data-dir /data/ABAW4/LSD --mae-ckpt mae_face_pretrain.pth --output-dir runs/cotex

The same on 8 GPUs of one machine:

    torchrun --nproc_per_node 8 main_lsd.py --data-dir /data/ABAW4/LSD --mae-ckpt mae_face_pretrain.pth \
        --output-dir runs/cotex

Evaluate a checkpoint and write the submission file (the test images' folder is --test-dir):

    python main_lsd.py --eval --ckpt runs/cotex/checkpoints/best_f1.pth --data-dir /data/ABAW4/LSD \
        --test-dir test_set_real_images --output-dir runs/cotex_eval

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("lsd", __doc__)
