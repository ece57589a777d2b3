"""``--demo``: the whole pipeline on built-in synthetic data, on a CPU, in minutes.

The data set is generated once into ``demo_data/<track>`` (``$ABAW_DEMO_DATA`` moves it) and reused. The model is a
small hybrid ViT trained from scratch (no pretrained weights exist for synthetic faces), so the numbers show that the
pipeline learns, not what the reference system scores on ABAW4. The MTL demo trains EMMA without its DAN branch
(``--dan none``): there is no AffectNet DAN for synthetic faces, and a random frozen DAN's scores would be large noise
in the VA head's input. The demo's settings are the parser's defaults under ``--demo``, so every flag typed on the
command line wins over them (for example ``--epochs 1`` or ``--output-dir``).
"""

from __future__ import annotations

import os
import time

from utils import dist
from utils.errors import flag_name
from utils.monitor import log

# The ViT is the nano size with the hybrid patch embedding (ResNet stages down to an 8 px grid): trained from
# scratch on two CPU cores, a patchify ViT stays near constant predictions for several hundred steps on this data,
# while the hybrid learns from the first epoch. Real runs start from MAE weights and use the patchify layer. Each
# stage adds its own settings (``Task.demo_run``) and data set (``Task.demo_data``).
DEMO_COMMON = dict(vit="nano", patch_size=8, patch_embed="hybrid", global_pool=True, epochs=3, batch_size=64,
                   accum_iter=1, blr=2e-3, layer_decay=1.0, drop_path=0.0, clip_grad=1.0, weight_decay=0.05,
                   num_workers=2, log_interval=10)

# A fine-tuning demo with the patchify layer (--patch-embed linear, which --mae-ckpt implies) trains this many epochs
# instead of 3: a patchify epoch costs less than a hybrid one, so either run fits the same five minutes. Its ViT has
# no BatchNorm for --bn-adapt to adapt, nor stem blocks.
PATCHIFY_RUN = dict(patch_embed="linear", epochs=5, bn_adapt=False, stem_blocks=None)

# ABAW_DEMO_SIZE=small: a seconds-long version of the same pipeline, for tests of the documented commands.
SMALL_RUN = dict(img_size=32, epochs=1, warmup_epochs=0, batch_size=8, max_steps=3, num_workers=0)


def small() -> bool:
    return os.environ.get("ABAW_DEMO_SIZE") == "small"


def data_root(stage) -> str:
    folder = stage.demo_data.get("root", stage.name)  # a stage may share another stage's data set
    return os.path.join(os.environ.get("ABAW_DEMO_DATA", "demo_data"), folder + ("_small" if small() else ""))


def run_settings(stage) -> dict:
    """The demo's flag values; they become the parser's defaults under ``--demo``, so typed flags win."""
    root = data_root(stage)
    if "folder" in stage.demo_data:  # the generated set's image folder, for a stage that reads bare folders
        root = os.path.join(root, stage.demo_data["folder"])
    small_run = {**SMALL_RUN, **getattr(stage, "demo_small_run", {})} if small() else {}
    return {**DEMO_COMMON, **stage.demo_run, **small_run,
            "data_dir": [root] if getattr(stage, "many_data_dirs", False) else root}


def patchify_settings(args, stage) -> dict:
    """Defaults of a fine-tuning demo run with the patchify layer: asked for by ``--patch-embed linear``, or implied by
    ``--mae-ckpt`` (MAE weights fit the patchify layer, not the demo's hybrid one); empty for other runs."""
    if run_settings(stage).get("patch_embed") != "hybrid" or not (args.mae_ckpt or args.patch_embed == "linear"):
        return {}
    return {key: value for key, value in PATCHIFY_RUN.items() if not (small() and key in SMALL_RUN)}


def configure(args, stage) -> float:
    """Say which demo settings the user's flags replaced, and generate the cached synthetic data on first use;
    returns the demo's start time."""
    started = time.perf_counter()
    settings = run_settings(stage)
    overridden = [key for key in settings if key in args.typed]
    if overridden:
        log("demo settings replaced by your flags: " + ", ".join(
            f"{flag_name(key)} {getattr(args, key)} (demo: {settings[key]})" for key in overridden))
    if "data_dir" not in args.typed and dist.is_main() and stage.demo_data.get("synthetic"):
        from datasets import synthetic

        kind, params = stage.demo_data["synthetic"], stage.demo_data["small" if small() else "full"]
        root = data_root(stage)
        if not synthetic.is_generated(root, kind, **params):
            log(f"generating the demo's synthetic {kind} data in {root} (once; reused later)")
            start = time.perf_counter()
            synthetic.generate(kind, root, **params)
            log(f"generated in {time.perf_counter() - start:.0f} s")
    # e.g. the temporal demo trains its backbone first; the video demo generates its track's data set
    if hasattr(stage, "prepare_demo"):
        stage.prepare_demo(args)
    return started


def report(task, args, started: float) -> None:
    """Print the demo's score next to that of constant predictions on the same images."""
    if not dist.is_main():
        return
    score = task.demo_score(args.output_dir)
    if score is None:
        return
    name, value, baseline = score
    log(f"demo done in {time.perf_counter() - started:.0f} s: {name} {value:.4f} "
        f"(constant predictions: {baseline:.4f}); files in {args.output_dir}")
