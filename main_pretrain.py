"""MAE pretraining on folders of face images: the first stage of EMMA and masked CoTEX, whose ViTs start from it.

Quick look on the CPU with built-in synthetic faces (a few minutes; then fine-tune from it, see docs/pretraining.md):

    python main_pretrain.py --demo

Pretrain ViT-B/16 with MAE's recipe (mask 0.75, norm_pix_loss, blr 1.5e-4, batch 64 per process) on CelebA and the
ABAW frames, one process:

    python main_pretrain.py --data-dir /data/celeba/img_align_celeba /data/ABAW4/MTL/cropped_aligned \
        --output-dir runs/pretrain

The same on 8 GPUs of one machine, effective batch 4096 (64 x 8 processes x 8 accumulated), as MAE's paper:

    torchrun --nproc_per_node 8 main_pretrain.py --data-dir /data/celeba/img_align_celeba \
        /data/ABAW4/MTL/cropped_aligned --accum-iter 8 --output-dir runs/pretrain

Several machines: the same on each, with torchrun's --nnodes, --node_rank and --rdzv_endpoint.

Continue the official MAE checkpoints or a published face-MAE: ``--resume PATH`` for a training checkpoint (weights,
optimizer, epoch), ``--init PATH`` for weights alone. Fine-tune from the result:

    python main_mtl.py --data-dir /data/ABAW4/MTL --mae-ckpt runs/pretrain/checkpoints/last.pth

Reconstruction loss of a checkpoint over every image of --data-dir (fixed masks, the number repeats exactly):

    python main_pretrain.py --eval --ckpt runs/pretrain/checkpoints/last.pth --data-dir /data/faces_val \
        --output-dir runs/pretrain_eval

Interrupted runs continue with the same command (``--resume auto`` is the default).
"""

from engine.entry import main

if __name__ == "__main__":
    main("pretrain", __doc__)
