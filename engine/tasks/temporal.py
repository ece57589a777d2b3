"""The temporal stage: a sequence model over per-frame features of a frozen backbone, on the ABAW4 MTL track or the
per-video single-task tracks (``--task``, as ``main_mtl.py``: e.g. ``--task expr`` trains the expression head alone
on the EXPR track, over EMMA, CoTEX or MAE features) (the :class:`engine.task.Task` of ``main_temporal.py``).

The backbone (``--backbone-ckpt``: an EMMA, CoTEX or MAE checkpoint of this project) is run once over the train,
validation and test frames (``engine.features``: cached by a content key). The temporal model (``models.temporal``)
sees windows of consecutive listed frames of a video (``datasets.temporal``) and predicts each frame's MTL row; the
losses, metrics, AU threshold tuning, smoothing and submission files are the MTL stage's, on the per-frame outputs
that evaluation assembles from the overlapping windows.

With EMMA features that include its output row (``heads``), evaluation also reports the backbone's own frame-level
scores on the same test frames (``frame_p_mtl``, and ``frame_p_mtl_smoothed`` with VA smoothing chosen on
validation), so the temporal model's gain is measured against the same backbone.

Sound (``--audio logmel`` or a speech encoder): each listed frame also gets the audio features of a window centred on
its time (``engine.audio_features``, cached like the frame features), a second stream that the model fuses with the
first (``--fusion``); frames without sound are masked, and training drops the sound of a share of its windows
(``--audio-dropout``) so that videos without sound are predicted well. ``--features none`` leaves the frame features
out: a model of the sound alone.
"""

from __future__ import annotations

import argparse
import json
import os
from functools import cached_property

from datasets import mtl
from datasets.temporal import TrainWindows, WindowAugment, WindowSet, collate_windows
from engine import audio_features as audio_store
from engine import features as feature_store
from engine.cli import non_negative_int, positive_int, ratio
from engine.task import Selection, model_from_checkpoint, write_metrics
from engine.tasks.mtl import MTLTask, add_mtl_output_flags, add_task_flags, check_mtl_output_flags, check_task_flags
from utils import abaw, dist, metrics
from utils.errors import UserError
from utils.monitor import log

# Flags of the shared parser that describe an image model: the backbone's checkpoint decides those.
IMAGE_MODEL_FLAGS = ("mae_ckpt", "vit", "img_size", "patch_size", "patch_embed", "stem_blocks", "global_pool",
                     "drop_path", "layer_decay")


def seconds(text):
    value = float(text)
    if not 0.0 < value < 60.0:
        raise argparse.ArgumentTypeError(f"must be a duration in seconds, in (0, 60), got {text}")
    return value


def demo_backbones(args) -> list[str]:
    """The folders of the MTL demo runs the temporal demo reads: one, or one per left-out fold."""
    if args.folds == 1:
        return ["demo_mtl"]
    return [f"demo_mtl_fold{fold}of{args.folds}" for fold in range(args.folds)]


class TemporalTask(MTLTask):
    """A transformer or TCN over windows of per-frame features, trained with EMMA's masked MTL losses."""

    name = "temporal"
    prog = "main_temporal.py"
    model_name = "temporal"
    # The second stage of the ABAW5-7 winners (Netease Fuxi: 4 layers, 4 heads, width 128, 100-frame windows).
    defaults = dict(output_dir="runs/temporal", epochs=20, warmup_epochs=1, batch_size=32, accum_iter=1, blr=5e-4,
                    min_lr=1e-6, layer_decay=1.0, weight_decay=0.05, drop_path=0.0, clip_grad=1.0)
    demo_run = dict(output_dir="runs/demo_temporal", window=32, layers=2,
                    heads=4, epochs=12, warmup_epochs=1, batch_size=16, blr=1e-3, au_pos_weight="data",
                    tune_au_thresholds=True, log_interval=20)
    demo_small_run = dict(batch_size=2, window=8)  # ABAW_DEMO_SIZE=small: 4 training videos of 12 frames
    demo_data = dict(MTLTask.demo_data, root="mtl")  # the MTL demo's data set
    batch_size_help = "windows per process and batch (default: %(default)s)"
    selection = Selection({"mtl": "p_mtl", "va": "va", "expr": "f1_expr", "au": "f1_au"})
    ensembles = False  # a checkpoint brings its own backbone's features: --eval takes one
    model_flags = dict(kind="temporal", width="width", layers="layers", heads="heads", positions="positions",
                       kernel="tcn_kernel")
    saved_model_defaults = {}

    def __init__(self, args):
        super().__init__(args)
        self.backbone_path = args.backbone_ckpt
        self.parts = args.features
        self.window, self.stride = args.window, args.stride
        self.video_norm = args.video_norm
        self.audio_choice, self.audio_layer, self.audio_window = args.audio, args.audio_layer, args.audio_window
        self.audio_norm, self.fusion = args.audio_norm, args.fusion
        self._windows = {}

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        data = groups["data"]
        data.add_argument("--backbone-ckpt", metavar="PATH", nargs="+",
                          help="the frozen backbone whose per-frame features the temporal model reads: a checkpoint "
                               "of main_mtl.py (EMMA), main_lsd.py (CoTEX) or main_pretrain.py (MAE, which saw no "
                               "labels); with --folds K, K EMMA checkpoints of main_mtl.py --folds K --fold k; "
                               "--eval takes the ones the temporal checkpoint was trained on")
        data.add_argument("--folds", type=positive_int, default=1, metavar="K",
                          help="out-of-fold features: each training frame's from the backbone that did not train on "
                               "its video, validation and test frames' the mean of the K backbones' outputs "
                               "(default: %(default)s, one backbone)")
        data.add_argument("--features", default="auto", metavar="{auto,PARTS}",
                          help="comma list of feature parts: vit (pooled ViT feature), heads (EMMA's output row), dan "
                               "(EMMA's DAN scores); auto: all the backbone offers; none: no frame features, a model "
                               "of the sound alone (with --audio) (default: %(default)s)")
        data.add_argument("--video-norm", choices=["mean", "none"], default="mean",
                          help="mean: subtract each video's mean ViT feature (over its listed frames) from its frames' "
                               "ViT features, a per-person normalisation that removes what a video holds constant "
                               "(identity, lighting); none: the features as extracted (default: %(default)s)")
        data.add_argument("--feature-dir", metavar="DIR",
                          help="where features are cached, by content key (default: <output-dir>/features)")
        data.add_argument("--extract-batch-size", type=positive_int, default=64, metavar="N",
                          help="frames per batch of feature extraction (default: %(default)s)")
        data.add_argument("--audio", default="none", metavar="{none,logmel,PATH_OR_ID}",
                          help="the videos' sound as a second stream: logmel (a log-mel spectrogram, no weights), or a "
                               "Hugging Face speech encoder (Wav2Vec2, HuBERT, WavLM: a save_pretrained folder, or a "
                               "hub id in the local cache); none: frame features only (default: %(default)s)")
        data.add_argument("--audio-dir", metavar="DIR",
                          help="the WAV files (<video>.wav), with videos.json and times/ of main_prepare.py beside "
                               "this folder (default: <data-dir>/audio)")
        data.add_argument("--audio-layer", type=non_negative_int, default=None, metavar="K",
                          help="the speech encoder's hidden state: 0 its convolutional features, k the output of "
                               "transformer layer k (default: the middle layer)")
        data.add_argument("--audio-window", type=seconds, default=1.0, metavar="SECONDS",
                          help="each frame takes the mean and standard deviation of the audio features over this "
                               "long a window centred on its time (default: %(default)s)")
        data.add_argument("--audio-norm", choices=["mean", "none"], default="mean",
                          help="mean: subtract each video's mean audio feature over its frames with sound (what the "
                               "microphone and room hold constant); none: as extracted (default: %(default)s)")
        model = groups["model"]
        model.add_argument("--temporal", choices=["transformer", "tcn"], default="transformer",
                           help="sequence model (default: %(default)s)")
        model.add_argument("--window", type=positive_int, default=100, metavar="FRAMES",
                           help="listed frames per window (default: %(default)s)")
        model.add_argument("--stride", type=positive_int, default=None, metavar="FRAMES",
                           help="frames between window starts; evaluation averages the overlapping windows' outputs "
                                "(default: window / 2)")
        model.add_argument("--layers", type=positive_int, default=4, help="transformer layers or TCN blocks "
                                                                          "(default: %(default)s)")
        model.add_argument("--heads", type=positive_int, default=4, help="attention heads (default: %(default)s)")
        model.add_argument("--width", type=positive_int, default=128, help="model width (default: %(default)s)")
        model.add_argument("--dropout", type=ratio, default=0.1, help="dropout (default: %(default)s)")
        model.add_argument("--positions", choices=["sinusoidal", "learned"], default="sinusoidal",
                           help="position embedding of the transformer (default: %(default)s)")
        model.add_argument("--tcn-kernel", type=positive_int, default=5, metavar="K",
                           help="TCN kernel size, odd (default: %(default)s)")
        model.add_argument("--fusion", choices=["concat", "cross"], default="concat",
                           help="how sound joins the frame features: concat (each stream its own projection, joined "
                                "per frame) or cross (the frames attend to the window's sound) (default: "
                                "%(default)s)")
        model.add_argument("--audio-dropout", type=ratio, default=0.3, metavar="P",
                           help="share of training windows whose sound is dropped (modality dropout), so that videos "
                                "without sound are predicted well (default: %(default)s)")
        model.add_argument("--frame-dropout", type=ratio, default=0.0, metavar="P",
                           help="with --audio, share of the other training windows whose frame features are zeroed, "
                                "so that the model learns what the sound alone tells (default: %(default)s)")
        add_task_flags(groups)
        add_mtl_output_flags(groups)

    @staticmethod
    def derived_defaults(args) -> dict:
        derived = {"stride": max(1, args.window // 2)}
        if args.demo:  # the MTL demo's checkpoint(s), next to this demo's folder (runs/demo_mtl by default)
            derived["backbone_ckpt"] = [os.path.join(os.path.dirname(os.path.normpath(args.output_dir)), name,
                                                     "checkpoints", "best_mtl.pth") for name in demo_backbones(args)]
            if args.audio != "none":  # a demo with sound is another run than the one without: its own folder
                alone = "_alone" if args.features == "none" else ""
                derived["output_dir"] = os.path.normpath(args.output_dir) + "_audio" + alone
        return derived

    @staticmethod
    def check_flags(args, error) -> None:
        typed = set(getattr(args, "typed", ()))
        wrong = [flag for flag in IMAGE_MODEL_FLAGS if flag in typed]
        if wrong:
            error(f"{', '.join('--' + flag.replace('_', '-') for flag in wrong)}: the backbone's checkpoint "
                  f"(--backbone-ckpt) decides the image model; main_temporal.py's own model flags are --temporal, "
                  f"--window, --stride, --layers, --heads, --width, --dropout, --positions, --tcn-kernel")
        if args.features == "none" and args.audio == "none" and not args.eval:
            error("--features none leaves the model no input; give --audio (logmel or a speech encoder)")
        if args.audio == "none" and not args.eval:
            wrong = [flag for flag in ("audio_dir", "audio_layer", "audio_window") if flag in typed]
            if wrong:
                error(f"{', '.join('--' + flag.replace('_', '-') for flag in wrong)} without --audio: no sound is read")
        if not args.backbone_ckpt and not args.eval and args.features != "none":
            error("--backbone-ckpt is required: the checkpoint whose per-frame features the temporal model reads")
        for path in (args.backbone_ckpt or []) if args.features != "none" else []:
            if not os.path.isfile(path) and not args.demo:
                error(f"--backbone-ckpt {path}: no such file")
        if args.backbone_ckpt and len(args.backbone_ckpt) != args.folds:
            error(f"--folds {args.folds} needs {args.folds} --backbone-ckpt files (one per left-out fold), got "
                  f"{len(args.backbone_ckpt)}")
        if args.stride and args.stride > args.window:
            error(f"--stride {args.stride} exceeds --window {args.window}: frames between windows would never be "
                  f"predicted")
        if args.feature_dir and os.path.exists(args.feature_dir) and not os.path.isdir(args.feature_dir):
            error(f"--feature-dir {args.feature_dir} is a file; name a folder (it is created if needed)")
        check_task_flags(args, error)
        check_mtl_output_flags(args, error)

    @staticmethod
    def prepare_demo(args) -> None:
        """Train the MTL demo first (one per fold with --folds) where its checkpoint, the demo's backbone, is absent."""
        if "backbone_ckpt" in args.typed or args.features == "none":
            return
        from engine.cli import parse_args
        from engine.runner import train

        for fold, path in enumerate(args.backbone_ckpt):
            if os.path.isfile(path):
                continue
            argv = ["--demo", "--output-dir", os.path.dirname(os.path.dirname(path)), "--seed", str(args.seed),
                    "--device", args.device, "--precision", args.precision]
            argv += ["--data-dir", args.data_dir] if "data_dir" in args.typed else []
            argv += ["--folds", str(args.folds), "--fold", str(fold)] if args.folds > 1 else []
            log(f"no backbone at {path}: training the MTL demo first (main_mtl.py {' '.join(argv)})")
            train(parse_args("mtl", "", argv))

    # ---- features
    @cached_property
    def device(self):
        return dist.setup(self.args.device)

    @cached_property
    def precision_name(self) -> str:
        from engine.runtime import resolve_precision

        dtype = resolve_precision(self.args.precision, self.device)
        return "fp32" if dtype is None else str(dtype).replace("torch.", "")

    @cached_property
    def backbone(self) -> feature_store.Backbone:
        name = self.precision_name
        if self.parts == "none":
            return NoFrameFeatures()
        if len(self.backbone_path) > 1:
            return feature_store.FoldBackbones(self.backbone_path, self.parts, name)
        return feature_store.Backbone(self.backbone_path[0], self.parts, name)

    def feature_dir(self) -> str:
        return self.args.feature_dir or os.path.join(self.args.output_dir, "features")

    def split_features(self, split: str, dataset) -> feature_store.SplitFeatures:
        """A split's features over ``dataset``'s images (for the test list, stand-ins included)."""
        return self.backbone.split_features(split, list(dataset.images), dataset, self.feature_dir(), self.args,
                                            self.device)

    @cached_property
    def train_features(self) -> feature_store.SplitFeatures:
        dataset = mtl.MTLDataset(self.image_root(), self.train_annotations, skip_bad=True)
        return self.split_features("train", dataset)

    @cached_property
    def val_features(self) -> feature_store.SplitFeatures:
        return self.split_features("val", super().val_split())

    @cached_property
    def test_features(self) -> feature_store.SplitFeatures | None:
        dataset = super().test_split()
        return None if dataset is None else self.split_features("test", dataset)

    def centre(self, features: feature_store.SplitFeatures):
        """The columns that ``--video-norm mean`` centres per video (the ViT feature), or None."""
        return features.columns.get("vit") if self.video_norm == "mean" else None

    # ---- sound
    @cached_property
    def audio(self) -> audio_store.AudioSource | None:
        if self.audio_choice == "none":
            return None
        return audio_store.AudioSource(self.audio_choice, self.audio_layer, self.audio_window, self.precision_name)

    def audio_dir(self) -> str:
        return self.args.audio_dir or os.path.join(self.args.data_dir, "audio")

    def split_audio(self, split: str, images) -> dict:
        """The keyword arguments of a window set for the sound of ``images`` (none without ``--audio``)."""
        if self.audio is None:
            return {}
        from engine.runtime import make_autocast, resolve_precision

        autocast = make_autocast(self.device, resolve_precision(self.args.precision, self.device))
        sound = audio_store.split_audio(self.audio, self.audio_dir(), split, list(images), self.feature_dir(),
                                        self.device, autocast)
        if split == self.sound_check and not sound.available.any():
            raise UserError(f"--audio {self.audio_choice}: no sound found for any {split} frame in "
                            f"{self.audio_dir()} (every video silent, or no WAV there); drop --audio or name the WAV "
                            f"folder with --audio-dir")
        return dict(audio=sound.array, audio_available=sound.available, audio_centre=self.audio_norm == "mean")

    @property
    def sound_check(self) -> str:
        """The split that must hold some sound: training's, or validation's for --eval."""
        return "val" if self.args.eval else "train"

    # ---- data
    def train_split(self):
        annotations = self.train_annotations
        self.loss_fn  # noqa: B018 - built now, so that its message comes with the data's
        sound = self.split_audio("train", annotations.images)  # first: a bad recording stops the run at once
        features = self.train_features
        windows = TrainWindows(features.array, annotations.images, annotations.targets, self.window, self.stride,
                               features.available, self.centre(features), audio_dropout=self.args.audio_dropout,
                               frame_dropout=self.args.frame_dropout, **sound)
        self._windows["train"] = windows
        log(f"training windows: {len(windows)} of {self.window} frames (stride {self.stride}) over "
            f"{len(windows.runs)} videos")
        return windows, annotations.images

    def val_split(self):
        if "val" not in self._windows:
            features = self.val_features
            images = self.val_annotations.images
            self._windows["val"] = WindowSet(features.array, images, self.window, self.stride, features.available,
                                             self.centre(features), **self.split_audio("val", images))
        return self._windows["val"]

    def test_split(self):
        if "test" not in self._windows:
            features = self.test_features
            self._windows["test"] = None if features is None else WindowSet(
                features.array, self._test[0], self.window, self.stride, features.available, self.centre(features),
                **self.split_audio("test", self._test[0]))
        return self._windows["test"]

    def train_augment(self, img_size):
        return WindowAugment(self._windows["train"])

    def eval_collate(self, samples):
        return collate_windows(samples)

    def input_transform(self, img_size):
        return _identity

    # ---- model
    @property
    def output_width(self) -> int:  # one evaluation window's outputs, flattened
        return self.window * abaw.OUTPUT_WIDTH

    def model_config(self) -> dict:
        a = self.args
        config = dict(name="temporal", in_dim=int(self.train_features.array.shape[1]), kind=a.temporal, width=a.width,
                      layers=a.layers, heads=a.heads, dropout=a.dropout, positions=a.positions, window=self.window,
                      kernel=a.tcn_kernel, out_width=abaw.OUTPUT_WIDTH,
                      features=dict(self.backbone.describe(), video_norm=self.video_norm))
        if self.audio is not None:  # a model without sound keeps the config it always had
            config.update(audio_dim=self.audio.dim, fusion=self.fusion,
                          audio=dict(self.audio.describe(), norm=self.audio_norm))
        return config

    def check_model_flags(self, config: dict, path: str) -> None:
        super().check_model_flags(config, path)
        trained_on = config.get("features", {})
        if trained_on.get("key") != self.backbone.key:
            raise UserError(f"{path} was trained on the features of {trained_on.get('backbone')} (parts "
                            f"{','.join(trained_on.get('parts', []))}, {trained_on.get('precision')}, key "
                            f"{str(trained_on.get('key'))[:16]}), not those of {self.backbone.path} (parts "
                            f"{','.join(self.backbone.parts)}, {self.backbone.precision}, key "
                            f"{self.backbone.key[:16]}); name the same backbone, parts and precision")
        if trained_on.get("video_norm", "none") != self.video_norm:
            raise UserError(f"{path} was trained with --video-norm {trained_on.get('video_norm', 'none')}, not "
                            f"{self.video_norm}; drop the flag")
        heard = config.get("audio")
        if (heard or {}).get("key") != (None if self.audio is None else self.audio.key):
            trained = "without sound" if not heard else (f"on the sound of --audio {heard.get('audio')} (layer "
                                                         f"{heard.get('layer')}, {heard.get('window')} s windows, "
                                                         f"{heard.get('precision')})")
            raise UserError(f"{path} was trained {trained}, not with --audio {self.audio_choice}"
                            + ("" if self.audio is None else f" (layer {self.audio.describe()['layer']}, "
                               f"{self.audio_window:g} s windows, {self.audio.precision})")
                            + "; drop the audio flags, the checkpoint's are used")
        if heard and heard.get("norm", "mean") != self.audio_norm:
            raise UserError(f"{path} was trained with --audio-norm {heard.get('norm')}, not {self.audio_norm}; drop "
                            f"the flag")

    def load_pretrained(self, model) -> None:
        sound = "" if self.audio is None else (f", and the sound ({self.audio_choice}, {self.audio.dim} values per "
                                               f"frame, {self.fusion} fusion)")
        log(f"temporal {self.args.temporal} from random weights over the features of {self.backbone.path} "
            f"({', '.join(self.backbone.parts) or 'none'}; {model.config['in_dim']} values per frame){sound}")

    def load_for_eval(self, path: str):
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        config = checkpoint.get("model_config", {}) if isinstance(checkpoint, dict) else {}
        if config.get("name") != "temporal":
            raise UserError(f"{path} is not a temporal model's checkpoint (main_temporal.py trains those)")
        trained_on = config.get("features", {})
        typed = set(self.args.typed)
        heard = config.get("audio") or {}
        if "audio" not in typed:  # the sound the checkpoint was trained on, unless the flags say otherwise
            self.audio_choice = heard.get("audio", "none")
            if "audio_layer" not in typed and heard.get("audio") not in (None, "logmel"):
                self.audio_layer = heard.get("layer")
            if "audio_window" not in typed and heard:
                self.audio_window = float(heard["window"])
        if "audio_norm" not in typed and heard:
            self.audio_norm = heard.get("norm", "mean")
        if "fusion" not in typed and heard:
            self.fusion = config.get("fusion", "concat")
        if trained_on.get("key") == NoFrameFeatures.key and "features" not in typed:
            self.parts = "none"
        elif "backbone_ckpt" not in typed:  # where it was recorded, else a file of its name beside the checkpoint
            recorded = trained_on.get("backbone") or []
            recorded = [recorded] if isinstance(recorded, str) else list(recorded)
            found = [feature_store.find_backbone(name, path) for name in recorded]
            absent = [name for name, there in zip(recorded, found) if there is None]
            if absent or not recorded:
                raise UserError(f"{path} was trained on the features of {', '.join(absent) or 'an unnamed backbone'}, "
                                f"which is neither there nor beside it (in {os.path.dirname(os.path.abspath(path))}); "
                                f"put it there or pass --backbone-ckpt")
            self.backbone_path = found
        if "features" not in typed:
            self.parts = ",".join(trained_on.get("parts", [])) or "auto"
        if "video_norm" not in typed:
            self.video_norm = trained_on.get("video_norm", "none")
        if "window" not in typed:
            self.window = int(config["window"])
            if "stride" not in typed:
                self.stride = max(1, self.window // 2)
        if self.window > int(config["window"]) and config.get("kind") == "transformer":
            raise UserError(f"--window {self.window} exceeds the {config['window']} frames {path} was trained with")
        model = model_from_checkpoint(self, checkpoint, path, "temporal")
        self.use_checkpoint_settings(checkpoint, path)  # AU thresholds and smoothing windows, as MTL's
        return model

    def param_groups(self, model) -> list[dict]:
        from utils.optim import decay_groups

        return decay_groups(model, self.args.weight_decay)

    def scales_lr(self) -> bool:
        return False

    def random_targets(self, count: int, generator):
        rows = super().random_targets(count * self.window, generator)
        return rows.reshape(count, self.window, -1)

    # ---- training and prediction
    def loss(self, model, batch):
        inputs, targets = batch  # (features, gaps, valid[, audio, audio_valid]), per-frame targets
        valid = inputs[2]
        outputs = model(*inputs)
        return self.loss_fn(outputs[valid], targets[valid])

    def predict(self, model, inputs):
        outputs = model(*inputs)
        return outputs.reshape(outputs.shape[0], -1)

    # ---- files
    def write_outputs(self, out_dir, val_outputs, test_outputs, test_seen, checkpoint_path) -> dict:
        val = super().write_outputs(out_dir, val_outputs, test_outputs, test_seen, checkpoint_path)
        test_path = os.path.join(out_dir, "test_metrics.json")
        if "heads" in self.backbone.parts and test_outputs is not None and os.path.isfile(test_path):
            with open(test_path) as handle:
                test = json.load(handle)
            test.update(self.frame_level_scores())
            write_metrics(out_dir, "test", test)
        return val

    def frame_level_scores(self) -> dict:
        """The backbone's own outputs on the same test frames (its ``heads`` features), with the AU thresholds this
        run uses the same way (tuned on validation with ``--tune-au-thresholds``, else the backbone's), without and
        with VA smoothing chosen on validation (``--smooth-va auto``)."""
        val_out, test_out = self.val_features.part("heads"), self.test_features.part("heads")
        val_labels = self.val_annotations.targets
        images = self._test[0]
        if self.args.tune_au_thresholds:
            thresholds = metrics.tune_au_thresholds(abaw.au_probabilities(val_out), val_labels[:, abaw.LABEL_AU])[0]
        else:
            thresholds = list(self.backbone.checkpoint.get("au_thresholds") or self.au_thresholds)
        if self.per_video:  # each task's score of the backbone's outputs on the frames of its test list
            scores = self._per_video_test_metrics(test_out, thresholds) or {}
            return {f"frame_{key}": value for key, value in scores.items() if isinstance(value, float)}
        test_labels = self.test_targets(images)
        plain = metrics.mtl_metrics(*self.decode(test_out, thresholds), test_labels)
        videos, frames = mtl.video_and_frame(self.val_annotations.images)
        window, _ = metrics.choose_smoothing(val_out[:, abaw.OUT_VA], val_labels[:, abaw.LABEL_VA], videos, frames)
        smoothed = test_out.copy()
        if window > 1:
            test_videos, test_frames = mtl.video_and_frame(images)
            smoothed[:, abaw.OUT_VA] = metrics.smooth_by_video(smoothed[:, abaw.OUT_VA], test_videos, test_frames,
                                                               window)
        smooth = metrics.mtl_metrics(*self.decode(smoothed, thresholds), test_labels)
        return {"frame_p_mtl": plain["p_mtl"], "frame_p_mtl_smoothed": smooth["p_mtl"],
                "frame_smooth_va_window": int(window), "frame_ccc_v": plain["ccc_v"], "frame_ccc_a": plain["ccc_a"],
                "frame_f1_expr": plain["f1_expr"], "frame_f1_au": plain["f1_au"]}

    def demo_score(self, out_dir: str):
        score = super().demo_score(out_dir)
        if score is None:
            return None
        with open(os.path.join(out_dir, "test_metrics.json")) as handle:
            test = json.load(handle)
        if "frame_p_mtl" not in test:
            return score
        name = (f"synthetic test P_MTL of the temporal model (the backbone's frame-level P_MTL "
                f"{test['frame_p_mtl']:.4f}, with VA smoothing {test['frame_p_mtl_smoothed']:.4f})")
        return name, score[1], score[2]


class NoFrameFeatures:
    """``--features none``: no frame features (a model of the sound alone); windows still run over the listed
    frames, with their gaps."""

    key = "none"
    parts = ()
    path = "no backbone"
    precision = None
    checkpoint = {}

    def describe(self) -> dict:
        return {"backbone": None, "key": self.key, "parts": []}

    def split_features(self, split: str, images, dataset, feature_dir: str, args, device):
        import numpy as np

        return feature_store.SplitFeatures(np.zeros((len(images), 0), np.float32), np.ones(len(images), bool), {})


def _identity(inputs):
    return inputs
