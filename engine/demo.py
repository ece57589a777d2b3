"""``--demo``: the whole pipeline on built-in synthetic data, on a CPU, in minutes.

The data set is generated once into ``demo_data/<track>`` (``$ABAW_DEMO_DATA`` moves it) and reused. The model is a
small hybrid ViT trained from scratch (no pretrained weights exist for synthetic faces), so the numbers show that the
pipeline learns, not what the reference system scores on ABAW4. The MTL demo trains EMMA without its DAN branch
(``--dan none``): there is no AffectNet DAN for synthetic faces, and a random frozen DAN's scores would be large noise
in the VA head's input. The demo's settings are the parser's defaults under ``--demo``, so every flag typed on the
command line wins over them (for example ``--epochs 1`` or ``--output-dir``).
"""

from __future__ import annotations

import json
import os
import time

from engine.cli import flag_name
from utils import dist
from utils.monitor import log

# Small enough for two CPU cores, large enough to learn: the synthetic task needs many distinct frames.
DEMO_DATA = {
    "mtl": dict(videos=240, frames=100, size=64, seed=0),
    "lsd": dict(per_class=1500, size=64, seed=0),
}

# The ViT is the nano size with the hybrid patch embedding (ResNet-18 stages down to an 8 px grid): trained from
# scratch on two CPU cores, a patchify ViT stays near constant predictions for several hundred steps on this data,
# while the hybrid learns from the first epoch. Real runs start from MAE weights and use the patchify layer.
_COMMON = dict(vit="nano", patch_size=8, patch_embed="hybrid", global_pool=True, epochs=3, batch_size=64, accum_iter=1,
               blr=2e-3, layer_decay=1.0, drop_path=0.0, clip_grad=1.0, weight_decay=0.05, num_workers=2,
               log_interval=10)
DEMO_RUN = {
    "mtl": dict(_COMMON, img_size=48, warmup_epochs=0.4, output_dir="runs/demo_mtl", va_lr=1e-3, dan="none",
                au_pos_weight="data", tune_au_thresholds=True),
    "lsd": dict(_COMMON, img_size=48, blr=1e-3, warmup_epochs=0.3, output_dir="runs/demo_cotex", mask_ratio=0.5),
}


# ABAW_DEMO_SIZE=small: a seconds-long version of the same pipeline, for tests of the documented commands.
SMALL_DATA = {"mtl": dict(videos=6, frames=12, size=32, seed=0), "lsd": dict(per_class=8, size=32, seed=0)}
SMALL_RUN = dict(img_size=32, epochs=1, warmup_epochs=0, batch_size=8, max_steps=3, num_workers=0)


def small() -> bool:
    return os.environ.get("ABAW_DEMO_SIZE") == "small"


def data_root(track: str) -> str:
    return os.path.join(os.environ.get("ABAW_DEMO_DATA", "demo_data"), track + ("_small" if small() else ""))


def run_settings(track: str) -> dict:
    """The demo's flag values; they become the parser's defaults under ``--demo``, so typed flags win."""
    return dict(DEMO_RUN[track], **(SMALL_RUN if small() else {}), data_dir=data_root(track))


def configure(args) -> None:
    """Say which demo settings the user's flags replaced, and generate the cached synthetic data on first use."""
    from datasets import synthetic

    args.demo_started = time.perf_counter()
    track = args.track
    settings = run_settings(track)
    overridden = [key for key in settings if key in args.typed]
    if overridden:
        log("demo settings replaced by your flags: " + ", ".join(
            f"{flag_name(key)} {getattr(args, key)} (demo: {settings[key]})" for key in overridden))
    if "data_dir" not in args.typed:
        params = (SMALL_DATA if small() else DEMO_DATA)[track]
        if dist.is_main() and not synthetic.is_generated(args.data_dir, track, **params):
            log(f"generating the demo's synthetic {track.upper()} data in {args.data_dir} (once; reused later)")
            start = time.perf_counter()
            generate = synthetic.generate_mtl if track == "mtl" else synthetic.generate_lsd
            generate(args.data_dir, **params)
            log(f"generated in {time.perf_counter() - start:.0f} s")


def report(args) -> None:
    """Print the demo's test score next to that of constant predictions on the same split."""
    if not dist.is_main():
        return
    from engine.tasks import make_task

    path = os.path.join(args.output_dir, "test_metrics.json")
    if not os.path.isfile(path):
        return
    with open(path) as handle:
        test = json.load(handle)
    task = make_task(args)
    if args.track == "mtl":
        from datasets import mtl

        labels = mtl.read_annotations(os.path.join(args.data_dir, mtl.TEST_LABEL_FILE)).targets
        baseline = task.constant_baseline(labels)
        key, name = "p_mtl", "P_MTL"
    else:
        from datasets import lsd

        labels = lsd.read_test_labels(os.path.join(args.data_dir, lsd.TEST_LABEL_FILE))
        import numpy as np

        baseline = task.constant_baseline(np.array(list(labels.values())))
        key, name = "f1", "macro F1"
    elapsed = time.perf_counter() - args.demo_started
    log(f"demo done in {elapsed:.0f} s: synthetic test {name} {test[key]:.4f} "
        f"(constant predictions: {baseline[key]:.4f}); files in {args.output_dir}")
