"""Command-line flags of the entry points: those every stage shares, here, and each stage's own, added by its task
(``Task.add_flags``).

Flags use dashes; the reference implementation's underscore spellings are accepted as aliases so that old commands keep
working. Bad values end the program with one line on stderr and exit status 2. The parsed flags are final: defaults
that depend on other flags (the demo's settings, a stage's derived defaults) become parser defaults before the last
parse, and nothing rewrites the namespace afterwards.
"""

from __future__ import annotations

import argparse
import os


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def ratio(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def unit_interval(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def open_unit_interval(text):
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def unit_interval_or_zero(text):
    return 0.0 if float(text) == 0 else unit_interval(text)


def smoothing_window(text):
    """auto, 0 (off) or an odd window length (a centred window has as many frames on each side)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0 or (value > 1 and value % 2 == 0):
        raise argparse.ArgumentTypeError(f"must be auto, 0 (off) or an odd number of frames such as 5, got {text}")
    return value


def _add(group, *names, aliases=(), **kwargs):
    group.add_argument(*names, *aliases, **kwargs)


def build_parser(track, description: str) -> OneLineParser:
    """The parser of a stage's entry point (a track name such as "mtl", or a task class): the shared flags with the
    stage's recipe defaults, and the stage's own flags."""
    stage = _stage(track)
    defaults = stage.defaults
    parser = OneLineParser(prog=stage.prog, description=description,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {}

    data = groups["data"] = parser.add_argument_group("data and outputs")
    if getattr(stage, "many_data_dirs", False):
        _add(data, "--data-dir", aliases=["--data_dir", "--data_path"], metavar="DIR", nargs="+",
             help="folders of face images, searched at any depth and joined (JPEG/PNG; e.g. img_align_celeba, "
                  "cropped_aligned)")
    else:
        _add(data, "--data-dir", aliases=["--data_dir", "--data_path"], metavar="DIR",
             help="data root in the official ABAW4 layout (see docs/data.md)")
    _add(data, "--output-dir", aliases=["--output_dir"], metavar="DIR", default=defaults["output_dir"],
         help="where the run writes logs, checkpoints, metrics and predictions (default: %(default)s)")
    _add(data, "--test-list", aliases=["--test_list"], metavar="[TASK=]FILE", nargs="+",
         help="test list file (default: the official list file in --data-dir, if present); main_mtl.py's per-video "
              "tasks take one per task: a sample file (header image_location,...) or TASK=FILE for a list of "
              "video names")
    _add(data, "--num-workers", aliases=["--num_workers", "--workers"], type=non_negative_int, default=2,
         metavar="N", help="data-loading worker processes per GPU/process (default: %(default)s)")
    _add(data, "--max-bad-images", type=unit_interval, default=0.01, metavar="FRACTION",
         help="stop training when more than this fraction of training images cannot be decoded (default: %(default)s)")
    _add(data, "--allow-missing", action="store_true",
         help="fill test-list images that are missing or unreadable from the nearest frame of the same video "
              "(MTL) instead of stopping; the filled rows are listed")

    model = groups["model"] = parser.add_argument_group("model")
    _add(model, "--mae-ckpt", aliases=["--mae_pretrained_model_paths", "--pretrained_model_paths"], nargs="+",
         metavar="PATH", help="MAE checkpoint(s) for the ViT(s): a file ({'model': ...} or a timm state dict) or "
                              "timm:<name> with internet; absent: random initialisation (with a warning)")
    _add(model, "--vit", choices=["nano", "tiny", "small", "base", "large", "huge"], default="base",
         help="ViT size (default: %(default)s, as the reference; nano is for demos and tests)")
    _add(model, "--img-size", aliases=["--img_size"], type=positive_int, default=224, metavar="PX",
         help="input resolution (default: %(default)s)")
    _add(model, "--patch-size", type=positive_int, default=None, metavar="PX",
         help="ViT patch size (default: the size's own, 16; 14 for huge)")
    _add(model, "--patch-embed", choices=["linear", "hybrid"], default="linear",
         help="linear: the ViT's patchify layer, as the reference (MAE weights need it); hybrid: ResNet-18 stages "
              "down to the patch grid (patch 8, 16 or 32), the ViT paper's hybrid, which learns from scratch in far "
              "fewer steps (default: %(default)s)")
    _add(model, "--stem-blocks", type=positive_int, nargs="+", default=None, metavar="N",
         help="residual blocks in each ResNet stage of the hybrid patch embedding: one number for every stage, or "
              "one per stage (patch 8: 2 stages; 16: 3; 32: 4) (default: 2, ResNet-18's)")
    _add(model, "--bn-adapt", action=argparse.BooleanOptionalAction, default=False,
         help="re-estimate the BatchNorm statistics of the hybrid patch embedding on the validation images (labels "
              "unused; AdaBN) before each validation and evaluation, for a validation domain unlike training's, as "
              "in the synthetic-data track; the checkpoints keep them (default: off)")
    _add(model, "--global-pool", action="store_true",
         help="average-pool the patch tokens (fc_norm) instead of the class token used by the reference")
    _add(model, "--drop-path", aliases=["--drop_path_rate", "--drop_path"], type=ratio, default=defaults["drop_path"],
         metavar="P", help="stochastic depth rate (default: %(default)s)")

    optim = groups["optim"] = parser.add_argument_group("optimisation (defaults: the reference recipe)")
    _add(optim, "--epochs", aliases=["--epoch_num"], type=positive_int, default=defaults["epochs"],
         help="training epochs (default: %(default)s)")
    _add(optim, "--warmup-epochs", aliases=["--warmup_epochs"], type=non_negative_float,
         default=defaults["warmup_epochs"], help="linear warm-up epochs (default: %(default)s)")
    _add(optim, "--batch-size", aliases=["--batch_size"], type=positive_int, default=defaults["batch_size"],
         help=stage.batch_size_help)
    _add(optim, "--accum-iter", aliases=["--accum_iter"], type=positive_int, default=defaults["accum_iter"],
         help="micro-batches per optimizer update (default: %(default)s)")
    _add(optim, "--blr", type=non_negative_float, default=defaults["blr"],
         help="base learning rate; lr = blr * batch * accum * world / 256 (default: %(default)s)")
    _add(optim, "--lr", type=non_negative_float, default=None, help="absolute learning rate (overrides --blr)")
    _add(optim, "--min-lr", aliases=["--min_lr"], type=non_negative_float, default=defaults["min_lr"],
         help="learning rate at the end of the cosine (default: %(default)s)")
    _add(optim, "--layer-decay", aliases=["--layer_decay"], type=unit_interval, default=defaults["layer_decay"],
         help="layer-wise lr decay of the ViT (default: %(default)s)")
    _add(optim, "--weight-decay", aliases=["--weight_decay"], type=non_negative_float,
         default=defaults["weight_decay"], help="AdamW weight decay (default: %(default)s)")
    _add(optim, "--clip-grad", aliases=["--clip_grad"], type=non_negative_float, default=defaults["clip_grad"],
         help="gradient norm clipping, 0 to disable (default: %(default)s)")

    run = parser.add_argument_group("running")
    _add(run, "--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
         help="autocast precision; auto: bf16 where the device computes it natively (a GPU with bf16, a CPU with "
              "AVX512_BF16, AMX or Arm BF16), else fp32 (default: %(default)s)")
    _add(run, "--device", choices=["auto", "cuda", "cpu"], default="auto", help="default: %(default)s")
    _add(run, "--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add(run, "--resume", default="auto", metavar="{auto,none,PATH}",
         help="auto: continue from <output-dir>/checkpoints/last.pth when present (default: %(default)s)")
    _add(run, "--compile", action="store_true", help="torch.compile the model")
    _add(run, "--log-interval", type=positive_int, default=20, metavar="N",
         help="update the progress bar and TensorBoard every N micro-batches (default: %(default)s)")
    _add(run, "--max-steps", type=positive_int, default=None, metavar="N",
         help="stop each epoch after N micro-batches (quick trials)")
    _add(run, "--demo", action="store_true",
         help="generate synthetic data (cached) and run a small configuration end to end on the CPU")

    evaluation = groups["evaluation"] = parser.add_argument_group("evaluation and submission")
    _add(evaluation, "--eval", action="store_true",
         help="evaluate a checkpoint and write the submission file, no training")
    _add(evaluation, "--ckpt", metavar="PATH", nargs="+",
         help="checkpoint for --eval (default: the best checkpoint of --output-dir)"
              + ("; several: an ensemble, evaluated on the mean of their probabilities" if stage.ensembles else ""))
    _add(evaluation, "--eval-batch-size", type=positive_int, default=None, metavar="N",
         help="batch size of evaluation (default: 2 x --batch-size)")

    stage.add_flags(groups)
    return parser


def _stage(track):
    if isinstance(track, str):
        from engine.tasks import task_class

        return task_class(track)
    return track


def typed_flags(parser: argparse.ArgumentParser, argv) -> set[str]:
    """The destinations of the flags typed in ``argv`` (whatever their values), found by parsing with no defaults."""
    saved = {action: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action, default in saved.items():
            action.default = default


def parse_args(track, description: str, argv=None) -> argparse.Namespace:
    """Parse and check the flags; inconsistent values exit with one line and status 2.

    ``args.track`` names the stage, ``args.typed`` lists the flags given on the command line. With ``--demo`` the
    demo's settings replace the parser's defaults before parsing, so a typed flag always wins over them, whatever its
    value; so do the stage's derived defaults.
    """
    import sys

    from engine import demo

    stage = _stage(track)
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(stage, description)
    args = parser.parse_args(argv)  # --help, and one line for a bad value
    typed = typed_flags(parser, argv)
    parser.set_defaults(track=stage.name, typed=sorted(typed), **(demo.run_settings(stage) if args.demo else {}))
    args = parser.parse_args(argv)
    derived = dict(stage.derived_defaults(args), **(demo.patchify_settings(args, stage) if args.demo else {}))
    derived = {key: value for key, value in derived.items() if key not in typed}
    if derived:
        parser.set_defaults(**derived)
        args = parser.parse_args(argv)

    if not args.demo and not args.data_dir:
        parser.error("--data-dir is required (or --demo for the built-in synthetic data)")
    if args.data_dir and "data_dir" in typed:
        for folder in [args.data_dir] if isinstance(args.data_dir, str) else args.data_dir:
            if not os.path.isdir(folder):
                parser.error(f"--data-dir {folder} is not a directory")
    if args.resume not in ("auto", "none") and not args.eval and not os.path.isfile(args.resume):
        parser.error(f"--resume {args.resume}: no such file (use auto, none or a checkpoint path)")
    for path in args.ckpt or []:
        if not os.path.isfile(path):
            parser.error(f"--ckpt {path}: no such file")
    if args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs:g} exceeds --epochs {args.epochs}")
    if args.stem_blocks is not None:
        if args.patch_embed != "hybrid":
            parser.error("--stem-blocks sets the ResNet stages of the hybrid patch embedding; it needs --patch-embed "
                         "hybrid")
        from models.vit import VIT_PRESETS, stem_block_counts
        from utils.errors import UserError

        try:
            stem_block_counts(args.patch_size or VIT_PRESETS[args.vit]["patch_size"], args.stem_blocks)
        except UserError as error:
            parser.error(f"--stem-blocks: {error}")
    stage.check_flags(args, parser.error)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA device is available (use --device cpu or auto)")
    return args
