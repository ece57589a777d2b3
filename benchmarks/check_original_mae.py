"""Checks that this project's MAE and facebookresearch/mae's ``models_mae`` are the same model: each one's state dict
loads into the other strictly, and on the same images and the same masking noise both compute the same loss.

It imports MAE's own modules from a checkout, with the timm it was written for installed apart from ours::

    git clone https://github.com/facebookresearch/mae /tmp/mae
    pip install --no-deps --target /tmp/timm032 timm==0.3.2
    python benchmarks/check_original_mae.py --repo /tmp/mae --timm /tmp/timm032

Prints one JSON line; exits 1 when the models disagree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default="/tmp/mae", help="a checkout of facebookresearch/mae")
    parser.add_argument("--timm", default="/tmp/timm032", help="folder holding timm 0.3.2 (pip install --target)")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    opts = parser.parse_args(argv)

    import torch

    from models.mae import MAE

    ours = MAE("base", opts.img_size, decoder_dim=512, decoder_depth=8, decoder_heads=16, norm_pix_loss=True)
    # MAE's modules and their timm come after ours are imported, so that ours keep the installed timm.
    from bench_original import _shim_removed_names

    _shim_removed_names(torch)
    saved_timm = {name: module for name, module in sys.modules.items() if name == "timm" or name.startswith("timm.")}
    for name in saved_timm:
        del sys.modules[name]
    sys.path[:0] = [opts.timm, opts.repo]
    import models_mae

    theirs = models_mae.mae_vit_base_patch16(img_size=opts.img_size, norm_pix_loss=True)
    theirs_keys, ours_keys = list(theirs.state_dict()), list(ours.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)
    ours_copy = MAE("base", opts.img_size)
    ours_copy.load_state_dict(theirs.state_dict(), strict=True)

    images = torch.randn(opts.batch_size, 3, opts.img_size, opts.img_size)
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        their_loss, their_pred, their_mask = theirs(images, mask_ratio=0.75)
        torch.manual_seed(0)  # both draw the masking noise as torch.rand(batch, patches) after the patch embedding
        per_sample, our_pred, our_mask = ours(images, mask_ratio=0.75)
    record = {"same_key_order": theirs_keys == ours_keys, "keys": len(ours_keys),
              "their_loss": float(their_loss), "our_loss": float(per_sample.mean()),
              "max_pred_diff": float((their_pred - our_pred).abs().max()),
              "same_mask": bool(torch.equal(their_mask, our_mask))}
    agree = (record["same_key_order"] and record["same_mask"] and abs(record["their_loss"] - record["our_loss"]) < 1e-5
             and record["max_pred_diff"] < 1e-4)
    print(json.dumps(dict(record, agree=agree)), flush=True)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
