"""Command-line flags of both entry points.

Flags use dashes; the reference implementation's underscore spellings are accepted as aliases so that old commands keep
working. Bad values end the program with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os

# The reference recipes (ABAW4.md).
MTL_DEFAULTS = dict(output_dir="runs/emma", epochs=30, warmup_epochs=5, batch_size=100, accum_iter=4, blr=5e-4,
                    min_lr=1e-6, layer_decay=0.65, weight_decay=0.05, drop_path=0.1, clip_grad=0.05)
LSD_DEFAULTS = dict(output_dir="runs/cotex", epochs=6, warmup_epochs=5, batch_size=None, accum_iter=4, blr=5e-4,
                    min_lr=1e-6, layer_decay=0.65, weight_decay=0.05, drop_path=0.1, clip_grad=0.05)


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (no usage dump), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _non_negative_float(text):
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _ratio(text):
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _unit_interval(text):
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _smoothing(text):
    if text == "auto":
        return text
    try:
        return _non_negative_int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be auto or a window length >= 0, got {text}") from None


def _add(group, *names, aliases=(), **kwargs):
    group.add_argument(*names, *aliases, **kwargs)


def build_parser(track: str, description: str) -> OneLineParser:
    """The parser of ``main_mtl.py`` (track 'mtl') or ``main_lsd.py`` (track 'lsd')."""
    defaults = MTL_DEFAULTS if track == "mtl" else LSD_DEFAULTS
    prog = "main_mtl.py" if track == "mtl" else "main_lsd.py"
    parser = OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)

    data = parser.add_argument_group("data and outputs")
    _add(data, "--data-dir", aliases=["--data_dir", "--data_path"], metavar="DIR",
         help="data root in the official ABAW4 layout (see README, 'Data preparation')")
    _add(data, "--output-dir", aliases=["--output_dir"], metavar="DIR", default=defaults["output_dir"],
         help="where the run writes logs, checkpoints, metrics and predictions (default: %(default)s)")
    _add(data, "--test-list", aliases=["--test_list"], metavar="FILE",
         help="test list file (default: the official list file in --data-dir, if present)")
    _add(data, "--num-workers", aliases=["--num_workers", "--workers"], type=_non_negative_int, default=2,
         metavar="N", help="data-loading worker processes per GPU/process (default: %(default)s)")
    _add(data, "--max-bad-images", type=_unit_interval, default=0.01, metavar="FRACTION",
         help="stop training when more than this fraction of training images cannot be decoded (default: %(default)s)")
    _add(data, "--allow-missing", action="store_true",
         help="fill test-list images that are missing or unreadable from the nearest frame of the same video "
              "(MTL) instead of stopping; the filled rows are listed")
    if track == "lsd":
        from datasets import lsd

        _add(data, "--train-dir", aliases=["--train_dir"], default=lsd.TRAIN_DIR, metavar="NAME",
             help="training split folder under --data-dir (default: %(default)s)")
        _add(data, "--val-dir", aliases=["--val_dir"], default=lsd.VAL_DIR, metavar="NAME",
             help="validation split folder under --data-dir (default: %(default)s)")
        _add(data, "--test-dir", aliases=["--test_dir"], default=lsd.TEST_DIR, metavar="NAME",
             help="folder of the test images named by the test list (default: %(default)s)")

    model = parser.add_argument_group("model")
    _add(model, "--mae-ckpt", aliases=["--mae_pretrained_model_paths", "--pretrained_model_paths"], nargs="+",
         metavar="PATH", help="MAE checkpoint(s) for the ViT(s): a file ({'model': ...} or a timm state dict) or "
                              "timm:<name> with internet; absent: random initialisation (with a warning)")
    _add(model, "--vit", choices=["nano", "tiny", "small", "base", "large", "huge"], default="base",
         help="ViT size (default: %(default)s, as the reference; nano is for demos and tests)")
    _add(model, "--img-size", aliases=["--img_size"], type=_positive_int, default=224, metavar="PX",
         help="input resolution (default: %(default)s)")
    _add(model, "--patch-size", type=_positive_int, default=None, metavar="PX",
         help="ViT patch size (default: the size's own, 16; 14 for huge)")
    _add(model, "--patch-embed", choices=["linear", "hybrid"], default="linear",
         help="linear: the ViT's patchify layer, as the reference (MAE weights need it); hybrid: ResNet-18 stages "
              "down to the patch grid (patch 8, 16 or 32), the ViT paper's hybrid, which learns from scratch in far "
              "fewer steps (default: %(default)s)")
    _add(model, "--global-pool", action="store_true",
         help="average-pool the patch tokens (fc_norm) instead of the class token used by the reference")
    _add(model, "--drop-path", aliases=["--drop_path_rate", "--drop_path"], type=_ratio, default=defaults["drop_path"],
         metavar="P", help="stochastic depth rate (default: %(default)s)")
    if track == "mtl":
        _add(model, "--dan-ckpt", aliases=["--exp_pretrained_model_paths"], metavar="PATH",
             help="AffectNet-pretrained DAN checkpoint ({'model_state_dict': ...}); absent: random DAN (warning)")
        _add(model, "--dan", choices=["frozen", "none"], default="frozen",
             help="frozen: the reference's frozen DAN feeds its expression scores to the VA head; none: EMMA without "
                  "the DAN branch, for data without an expression-pretrained DAN (the demo) (default: %(default)s)")
    else:
        _add(model, "--vit-num", aliases=["--vit_num"], type=_positive_int, default=2, metavar="K",
             help="number of co-trained ViTs (default: %(default)s)")
        _add(model, "--mask-ratio", aliases=["--mask_rate", "--mask_ratio"], type=_ratio, default=0.75,
             metavar="R", help="fraction of patches each ViT drops in training (default: %(default)s; 0 gives "
                               "plain CoTEX, the reference script's default)")

    optim = parser.add_argument_group("optimisation (defaults: the reference recipe)")
    _add(optim, "--epochs", aliases=["--epoch_num"], type=_positive_int, default=defaults["epochs"],
         help="training epochs (default: %(default)s)")
    _add(optim, "--warmup-epochs", aliases=["--warmup_epochs"], type=_non_negative_float,
         default=defaults["warmup_epochs"], help="linear warm-up epochs (default: %(default)s)")
    batch_help = ("per-process batch size (default: %(default)s)" if track == "mtl" else
                  "per-process batch size (default: 64 * int(1 / (1 - mask ratio)), at most 4096, as the reference)")
    _add(optim, "--batch-size", aliases=["--batch_size"], type=_positive_int, default=defaults["batch_size"],
         help=batch_help)
    _add(optim, "--accum-iter", aliases=["--accum_iter"], type=_positive_int, default=defaults["accum_iter"],
         help="micro-batches per optimizer update (default: %(default)s)")
    _add(optim, "--blr", type=_non_negative_float, default=defaults["blr"],
         help="base learning rate; lr = blr * batch * accum * world / 256 (default: %(default)s)")
    _add(optim, "--lr", type=_non_negative_float, default=None, help="absolute learning rate (overrides --blr)")
    _add(optim, "--min-lr", aliases=["--min_lr"], type=_non_negative_float, default=defaults["min_lr"],
         help="learning rate at the end of the cosine (default: %(default)s)")
    _add(optim, "--layer-decay", aliases=["--layer_decay"], type=_unit_interval, default=defaults["layer_decay"],
         help="layer-wise lr decay of the ViT (default: %(default)s)")
    _add(optim, "--weight-decay", aliases=["--weight_decay"], type=_non_negative_float,
         default=defaults["weight_decay"], help="AdamW weight decay (default: %(default)s)")
    _add(optim, "--clip-grad", aliases=["--clip_grad"], type=_non_negative_float, default=defaults["clip_grad"],
         help="gradient norm clipping, 0 to disable (default: %(default)s)")
    if track == "mtl":
        _add(optim, "--au-pos-weight", choices=["reference", "data"], default="reference",
             help="AU BCE pos_weight: the reference's values (tuned to s-Aff-Wild2) or negatives/positives of the "
                  "training annotations (default: %(default)s)")
        _add(optim, "--va-lr", aliases=["--va_lr"], type=_non_negative_float, default=1e-4,
             help="constant learning rate of the VA head, as the reference's separate Adam (default: %(default)s)")
    else:
        _add(optim, "--lambda-ce", aliases=["--lambda_CE", "--lambda_ce"], type=_non_negative_float, default=1.0,
             help="weight of the cross-entropy term (default: %(default)s)")
        _add(optim, "--lambda-js", aliases=["--lambda_JS", "--lambda_js"], type=_non_negative_float, default=100.0,
             help="weight of the Jensen-Shannon term (default: %(default)s)")
        _add(optim, "--scale-lr", aliases=["--zoom_lr"], action="store_true",
             help="scale the lr by batch * accum * world / 256 (the reference LSD recipe used blr as the lr)")

    run = parser.add_argument_group("running")
    _add(run, "--precision", choices=["auto", "bf16", "fp16", "fp32"], default="auto",
         help="autocast precision; auto: bf16 where the device computes it natively (a GPU with bf16, a CPU with "
              "AVX512_BF16, AMX or Arm BF16), else fp32 (default: %(default)s)")
    _add(run, "--device", choices=["auto", "cuda", "cpu"], default="auto", help="default: %(default)s")
    _add(run, "--seed", type=int, default=0, help="random seed (default: %(default)s)")
    _add(run, "--resume", default="auto", metavar="{auto,none,PATH}",
         help="auto: continue from <output-dir>/checkpoints/last.pth when present (default: %(default)s)")
    _add(run, "--compile", action="store_true", help="torch.compile the model")
    _add(run, "--log-interval", type=_positive_int, default=20, metavar="N",
         help="update the progress bar and TensorBoard every N micro-batches (default: %(default)s)")
    _add(run, "--max-steps", type=_positive_int, default=None, metavar="N",
         help="stop each epoch after N micro-batches (quick trials)")
    _add(run, "--demo", action="store_true",
         help="generate synthetic data (cached) and run a small configuration end to end on the CPU")

    evaluation = parser.add_argument_group("evaluation and submission")
    _add(evaluation, "--eval", action="store_true",
         help="evaluate a checkpoint and write the submission file, no training")
    _add(evaluation, "--ckpt", metavar="PATH",
         help="checkpoint for --eval (default: the best checkpoint of --output-dir)")
    _add(evaluation, "--eval-batch-size", type=_positive_int, default=None, metavar="N",
         help="batch size of evaluation (default: 2 x --batch-size)")
    if track == "mtl":
        _add(evaluation, "--tune-au-thresholds", action="store_true",
             help="pick a per-AU threshold on validation and use it for the test file; the thresholds are saved "
                  "in <output-dir>/au_thresholds.json (the checkpoint is never modified)")
        _add(evaluation, "--au-thresholds", metavar="FILE",
             help="per-AU thresholds from an earlier run's au_thresholds.json (or val_metrics.json), instead of "
                  "the checkpoint's (default: the checkpoint's, else 0.5)")
        _add(evaluation, "--smooth-va", type=_smoothing, default=0, metavar="{auto,0,W}",
             help="average VA over W neighbouring frames of a video; auto picks W on validation (default: off)")
        _add(evaluation, "--smooth-expr", type=_smoothing, default=0, metavar="{auto,0,W}",
             help="the same for expression probabilities (default: off)")
    return parser


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


def flag_name(dest: str) -> str:
    """The documented spelling of a flag (``--img-size`` for ``img_size``)."""
    return "--" + dest.replace("_", "-")


def parse_args(track: str, description: str, argv=None) -> argparse.Namespace:
    """Parse and check the flags; inconsistent values exit with one line and status 2.

    ``args.typed`` lists the flags given on the command line. With ``--demo`` the demo's settings replace the
    parser's defaults before parsing, so a typed flag always wins over them, whatever its value.
    """
    import sys

    from engine import demo

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(track, description)
    args = parser.parse_args(argv)  # --help, and one line for a bad value
    typed = typed_flags(parser, argv)
    if args.demo:
        parser.set_defaults(**demo.run_settings(track))
        args = parser.parse_args(argv)
    args.track = track
    args.typed = sorted(typed)
    if not args.demo and not args.data_dir:
        parser.error("--data-dir is required (or --demo for the built-in synthetic data)")
    if args.data_dir and "data_dir" in typed and not os.path.isdir(args.data_dir):
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    if args.resume not in ("auto", "none") and not args.eval and not os.path.isfile(args.resume):
        parser.error(f"--resume {args.resume}: no such file (use auto, none or a checkpoint path)")
    if args.ckpt and not os.path.isfile(args.ckpt):
        parser.error(f"--ckpt {args.ckpt}: no such file")
    if getattr(args, "au_thresholds", None) and not os.path.isfile(args.au_thresholds):
        parser.error(f"--au-thresholds {args.au_thresholds}: no such file")
    if args.warmup_epochs > args.epochs:
        parser.error(f"--warmup-epochs {args.warmup_epochs:g} exceeds --epochs {args.epochs}")
    if track == "lsd":
        if args.mae_ckpt and args.vit_num % len(args.mae_ckpt) != 0:
            parser.error(f"--vit-num {args.vit_num} is not divisible by the number of --mae-ckpt files "
                         f"({len(args.mae_ckpt)}); give one checkpoint, or one per ViT")
        if args.batch_size is None:
            # The reference grows the batch with the mask ratio, since dropped tokens free memory.
            args.batch_size = min(64 * int(1 / (1 - args.mask_ratio)), 4096)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA device is available (use --device cpu or auto)")
    return args
