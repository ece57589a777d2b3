"""The video-level stage: one prediction per video (Emotional Mimicry Intensity; Ambivalence/Hesitancy per video), or
per frame of a video read whole (A/H per frame), from the video's streams (the :class:`engine.task.Task` of
``main_video.py``; ``--track`` names the track, whose module in ``datasets.tracks`` reads its files, scores and
writes the submission).

Streams (``models.video`` reads them together, each masked where a video lacks it):

- ``frames``: a frozen backbone's per-frame features (``--backbone-ckpt``: an EMMA, CoTEX or MAE checkpoint of this
  project; ``engine.features``, cached) on at most ``--frames-per-video`` face crops spread over the video (every
  crop for a frame-level track);
- ``audio``: the video's sound (``--audio logmel`` or a speech encoder), pooled in windows over the recording;
- ``track:<name>``: the organisers' pre-extracted features (``--track-features``; numpy arrays only are read);
- ``text``: transcript embeddings of a ``transformers`` text encoder (``--text``).

Training minimises the binary cross-entropy of the sigmoid outputs against the labels (EMI's intensities are
fractions of annotators, soft targets in [0, 1]; A/H's are 0 or 1), with whole streams dropped from a share of the
training samples (``--stream-dropout``) so that videos without sound or faces are predicted well. The best
checkpoint is the one with the track's main validation score.
"""

from __future__ import annotations

import json
import os
from functools import cached_property

import numpy as np
import torch

from datasets import tracks as track_registry
from datasets.video_level import (
    MISSING_FRAME_LABEL,
    StreamAugment,
    StreamSet,
    VideoStreams,
    collate_eval,
    evenly_spaced,
)
from engine import features as feature_store
from engine import video_streams
from engine.cli import open_unit_interval, positive_int, ratio
from engine.task import Selection, check_model_name, save_figures, write_metrics
from engine.tasks.temporal import seconds
from utils import dist
from utils.errors import UserError
from utils.monitor import log, warn


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(values, np.float64)))


class VideoTask:
    """Streams of a whole video -> the track's label, through :class:`models.video.VideoModel`."""

    name = "video"
    prog = "main_video.py"
    model_name = "video"
    defaults = dict(output_dir="runs/video", epochs=30, warmup_epochs=2, batch_size=32, accum_iter=1, blr=1e-3,
                    min_lr=1e-6, layer_decay=1.0, weight_decay=0.05, drop_path=0.0, clip_grad=1.0)
    demo_run = dict(output_dir="runs/demo_video", epochs=30, warmup_epochs=2, batch_size=16, blr=2e-3, layers=1,
                    width=64, frames_per_video=16, audio="logmel", log_interval=5)
    demo_small_run = dict(batch_size=4, frames_per_video=4, epochs=1, max_steps=2)
    # The demo's data set is the track's (derived_defaults); its backbone is the MTL demo's checkpoint.
    demo_data = dict(synthetic=None)
    batch_size_help = "videos (frame-level tracks: windows of frames) per process and batch (default: %(default)s)"
    many_data_dirs = False
    init_flag = "--backbone-ckpt"
    ensembles = False
    model_flags = dict(width="width", layers="layers", heads="heads")

    def __init__(self, args):
        self.args = args
        self.track = track_registry.video_track(args.track_name)
        self.selection = Selection({self.track.main_metric: self.track.main_metric})
        self.backbone_path = args.backbone_ckpt
        self.parts = args.features
        self.audio_choice, self.audio_layer, self.audio_window = args.audio, args.audio_layer, args.audio_window
        self.text_choice = args.text
        self.track_features = args.track_features
        self.frames_per_video, self.max_tokens = args.frames_per_video, args.max_tokens
        self.window = args.window if self.frame_level else None
        self.decision = {}  # the track's decision settings (A/H: the threshold on p1), chosen once training is done
        self._sets = {}

    @property
    def frame_level(self) -> bool:
        return self.track.level == "frame"

    # ---- command line
    @staticmethod
    def add_flags(groups) -> None:
        data = groups["data"]
        data.add_argument("--track", dest="track_name", choices=track_registry.video_track_names(), default="emi",
                          help="the track: " + "; ".join(f"{name}: {track_registry.get_track(name).title}"
                                                         for name in track_registry.video_track_names())
                               + " (default: %(default)s)")
        data.add_argument("--backbone-ckpt", metavar="PATH",
                          help="the frozen frame model whose per-frame features are the face stream: a checkpoint of "
                               "main_mtl.py (EMMA), main_lsd.py (CoTEX) or main_pretrain.py (MAE); absent: no face "
                               "stream; --eval takes the one the checkpoint was trained on")
        data.add_argument("--features", default="auto", metavar="{auto,PARTS}",
                          help="comma list of the backbone's feature parts: vit, heads, dan; auto: all it offers "
                               "(default: %(default)s)")
        data.add_argument("--frames-per-video", type=positive_int, default=32, metavar="N",
                          help="face crops per video whose features are read, spread evenly over the video (every "
                               "crop for a frame-level track) (default: %(default)s)")
        data.add_argument("--audio", default="none", metavar="{none,logmel,PATH_OR_ID}",
                          help="the videos' sound as a stream: logmel (no weights), or a Hugging Face speech encoder "
                               "(a save_pretrained folder, or a hub id in the local cache) (default: %(default)s)")
        data.add_argument("--audio-layer", type=int, default=None, metavar="K",
                          help="the speech encoder's hidden state (default: the middle layer)")
        data.add_argument("--audio-window", type=seconds, default=1.0, metavar="SECONDS",
                          help="the sound is pooled in windows of this length (default: %(default)s)")
        data.add_argument("--track-features", default="auto", metavar="{auto,none,NAMES}",
                          help="the organisers' pre-extracted feature sets to read as streams (e.g. vit,wav2vec2); "
                               "auto: every set the track's files hold (default: %(default)s)")
        data.add_argument("--text", default="none", metavar="{none,PATH_OR_ID}",
                          help="a Hugging Face text encoder (a save_pretrained folder, or a hub id in the local "
                               "cache) whose embeddings of the transcript chunks are a stream (default: "
                               "%(default)s)")
        data.add_argument("--max-tokens", type=positive_int, default=64, metavar="N",
                          help="at most this many steps per stream and video besides the face frames (default: "
                               "%(default)s)")
        data.add_argument("--threshold", type=threshold_flag, default="auto", metavar="{auto,P}",
                          help="a track of 0/1 decisions (A/H): decide 1 where p1 >= P; auto: the threshold with the "
                               "best validation score, stored in the checkpoint (default: %(default)s)")
        data.add_argument("--feature-dir", metavar="DIR",
                          help="where features are cached, by content key (default: <output-dir>/features)")
        data.add_argument("--extract-batch-size", type=positive_int, default=64, metavar="N",
                          help="frames per batch of feature extraction (default: %(default)s)")
        model = groups["model"]
        model.add_argument("--layers", type=positive_int, default=2, help="transformer layers (default: %(default)s)")
        model.add_argument("--heads", type=positive_int, default=4, help="attention heads (default: %(default)s)")
        model.add_argument("--width", type=positive_int, default=128, help="model width (default: %(default)s)")
        model.add_argument("--dropout", type=ratio, default=0.1, help="dropout (default: %(default)s)")
        model.add_argument("--window", type=positive_int, default=64, metavar="FRAMES",
                           help="frame-level tracks: face frames per sample (default: %(default)s)")
        model.add_argument("--stream-dropout", type=ratio, default=0.2, metavar="P",
                           help="chance that a training sample loses each of its streams (never all of them), so "
                                "that videos without sound or faces are predicted well (default: %(default)s)")

    @staticmethod
    def derived_defaults(args) -> dict:
        derived = {}
        if args.demo:  # the track's synthetic set, and the MTL demo's checkpoint as the backbone
            from engine import demo

            folder = track_registry.get_track(args.track_name).synthetic  # ah and ah_frame share one set
            derived["data_dir"] = os.path.join(os.environ.get("ABAW_DEMO_DATA", "demo_data"),
                                               folder + ("_small" if demo.small() else ""))
            derived["output_dir"] = os.path.normpath(args.output_dir).replace("demo_video", f"demo_{args.track_name}")
            derived["backbone_ckpt"] = os.path.join(os.path.dirname(os.path.normpath(args.output_dir)), "demo_mtl",
                                                    "checkpoints", "best_mtl.pth")
        return derived

    @staticmethod
    def check_flags(args, error) -> None:
        typed = set(getattr(args, "typed", ()))
        if args.audio == "none" and not args.eval:
            wrong = [flag for flag in ("audio_layer", "audio_window") if flag in typed]
            if wrong:
                error(f"{', '.join('--' + flag.replace('_', '-') for flag in wrong)} without --audio: no sound is read")
        if args.backbone_ckpt and not os.path.isfile(args.backbone_ckpt) and not args.demo:
            error(f"--backbone-ckpt {args.backbone_ckpt}: no such file")
        if not args.eval and not args.backbone_ckpt and args.audio == "none" and args.text == "none" \
                and args.track_features == "none":
            error("no stream to learn from: give --backbone-ckpt (faces), --audio, --text or --track-features")
        if "threshold" in typed and not hasattr(track_registry.get_track(args.track_name), "tune"):
            error(f"--threshold: the {args.track_name} track makes no 0/1 decisions")
        if args.feature_dir and os.path.exists(args.feature_dir) and not os.path.isdir(args.feature_dir):
            error(f"--feature-dir {args.feature_dir} is a file; name a folder (it is created if needed)")

    @staticmethod
    def prepare_demo(args) -> None:
        """Generate the track's synthetic set, and train the MTL demo first where its checkpoint (the backbone) is
        absent."""
        from datasets import synthetic
        from engine import demo

        track = track_registry.get_track(args.track_name)
        if "data_dir" not in args.typed and dist.is_main():
            # 400 videos (240 to train): with 100, the face stream of EMI's demo scored no better than constants
            params = dict(videos=15, frames=8, size=32) if demo.small() else dict(videos=400)
            if not synthetic.is_generated(args.data_dir, track.synthetic, **params):
                log(f"generating the demo's synthetic {track.synthetic} data in {args.data_dir} (once; reused later)")
                synthetic.generate(track.synthetic, args.data_dir, **params)
        dist.barrier()
        if "backbone_ckpt" in args.typed or not args.backbone_ckpt or os.path.isfile(args.backbone_ckpt):
            return
        from engine.cli import parse_args
        from engine.runner import train
        from engine.tasks.mtl import MTLTask

        argv = ["--demo", "--output-dir", os.path.dirname(os.path.dirname(args.backbone_ckpt)), "--seed",
                str(args.seed), "--device", args.device, "--precision", args.precision]
        log(f"no backbone at {args.backbone_ckpt}: training the MTL demo first (main_mtl.py {' '.join(argv)})")
        backbone_args = parse_args("mtl", "", argv)
        demo.configure(backbone_args, MTLTask)  # its data set, generated once
        train(backbone_args)

    # ---- the runtime
    @cached_property
    def device(self):
        return dist.setup(self.args.device)

    @cached_property
    def dtype(self):
        from engine.runtime import resolve_precision

        return resolve_precision(self.args.precision, self.device)

    @property
    def precision_name(self) -> str:
        return "fp32" if self.dtype is None else str(self.dtype).replace("torch.", "")

    def feature_dir(self) -> str:
        return self.args.feature_dir or os.path.join(self.args.output_dir, "features")

    # ---- data
    def read_split(self, split: str):
        if split not in self._sets:
            data_dir = self.args.data_dir
            if split != "train" and not self.track.find(data_dir, split):
                self._sets[split] = None
            else:
                self._sets[split] = self.track.read_split(data_dir, split)
        return self._sets[split]

    @cached_property
    def backbone(self) -> feature_store.Backbone | None:
        if not self.backbone_path:
            return None
        return feature_store.Backbone(self.backbone_path, self.parts, self.precision_name)

    @cached_property
    def audio(self):
        if self.audio_choice == "none":
            return None
        from engine.audio_features import AudioSource

        return AudioSource(self.audio_choice, self.audio_layer, self.audio_window, self.precision_name)

    @cached_property
    def text_encoder(self):
        if self.text_choice == "none":
            return None
        from models.text import TextEncoder

        return TextEncoder(self.text_choice, self.device)

    def feature_names(self, split) -> list[str]:
        """The organisers' feature sets read as streams: those of --track-features, or every set the split holds."""
        if self.track_features == "none":
            return []
        held = sorted({name for item in split.items for name in item.features})
        if self.track_features == "auto":
            return held
        wanted = [name.strip() for name in self.track_features.split(",") if name.strip()]
        absent = [name for name in wanted if name not in held]
        if absent:
            raise UserError(f"--track-features {self.track_features}: {', '.join(absent)} not found in "
                            f"{self.args.data_dir} (it holds: {', '.join(held) or 'none'})")
        return wanted

    def sources(self, split) -> list:
        from engine.runtime import make_autocast

        sources = []
        if self.audio is not None:
            sources.append(video_streams.SoundSource(self.audio, self.device, make_autocast(self.device, self.dtype),
                                                     self.max_tokens))
        sources += [video_streams.FeatureFileSource(name, self.max_tokens) for name in self._stream_features(split)]
        if self.text_encoder is not None:
            sources.append(video_streams.TextSource(self.text_encoder, self.max_tokens))
        return sources

    def _stream_features(self, split) -> list[str]:
        if not hasattr(self, "_feature_set"):
            self._feature_set = self.feature_names(split)  # chosen on training's split, kept for the others
        return self._feature_set

    def frame_rows(self, item) -> np.ndarray:
        """Which of a video's face crops are read."""
        if self.frame_level:
            return np.arange(len(item.frames))
        return evenly_spaced(len(item.frames), self.frames_per_video)

    def streams(self, split_name: str) -> VideoStreams:
        split = self.read_split(split_name)
        names, dims, values, times = [], [], [], []
        if self.backbone is not None:
            chosen = [self.frame_rows(item) for item in split.items]
            images = [os.path.join(item.frames_root, item.frames[row]) for item, rows in zip(split.items, chosen)
                      for row in rows]
            if not images:
                raise UserError(f"{split.source}: no face crop for any {split_name} video; prepare the videos with "
                                f"main_prepare.py, or leave the face stream out (no --backbone-ckpt)")
            from datasets.images import ImageListDataset

            dataset = ImageListDataset("", images, skip_bad=True)
            features = self.backbone.split_features(split_name, images, dataset, self.feature_dir(), self.args,
                                                    self.device)
            frame_values, frame_times, start = [], [], 0
            for item, rows in zip(split.items, chosen):
                block = np.asarray(features.array[start:start + len(rows)], np.float32)
                keep = features.available[start:start + len(rows)]
                start += len(rows)
                if not len(rows) or (not keep.any() and not self.frame_level):
                    frame_values.append(None), frame_times.append(None)
                    continue
                numbers = np.asarray(item.frame_numbers if item.frame_numbers is not None
                                     else np.arange(1, len(item.frames) + 1), np.float64)[rows]
                span = max(numbers[-1] - numbers[0], 1.0)
                time = ((numbers - numbers[0]) / span).astype(np.float32)
                if self.frame_level:  # every frame keeps its place; an unreadable one has zero features
                    frame_values.append(np.where(keep[:, None], block, 0.0).astype(np.float32))
                    frame_times.append(time)
                else:
                    frame_values.append(block[keep]), frame_times.append(time[keep])
            names.append("frames"), dims.append(int(features.array.shape[1]))
            values.append(frame_values), times.append(frame_times)
        for source in self.sources(split):
            per_video, per_time, dim = video_streams.split_stream(source, split_name, split, self.feature_dir())
            names.append(source.name), dims.append(dim), values.append(per_video), times.append(per_time)
        if not names:
            raise UserError("no stream to learn from: give --backbone-ckpt (faces), --audio, --text or "
                            "--track-features")
        if self.frame_level and names[0] != "frames":
            raise UserError(f"--track {self.track.name} predicts each face frame: give --backbone-ckpt")
        return VideoStreams(names, dims, values, times)

    def _stream_set(self, split_name: str, train: bool = False):
        split = self.read_split(split_name)
        if split is None:
            return None
        streams = self.streams(split_name)
        self._check_streams(streams, split_name)
        targets = split.labels() if not self.frame_level else None
        frame_targets = None
        if self.frame_level:
            frame_targets = [np.full(len(item.frames), MISSING_FRAME_LABEL, np.float32) if item.frame_labels is None
                             else np.asarray(item.frame_labels, np.float32) for item in split.items]
        if train and not self.frame_level and targets is None:
            raise UserError(f"{split.source}: some training videos have no label")
        return StreamSet(streams, targets, frame_targets, self.window, train=train,
                         stream_dropout=self.args.stream_dropout if train else 0.0)

    def _check_streams(self, streams: VideoStreams, split_name: str) -> None:
        if not hasattr(self, "_layout"):
            self._layout = list(zip(streams.names, streams.dims))
            present = streams.present()
            log(f"{split_name} streams: " + ", ".join(f"{name} ({dim} values; {int(row.sum())} of {streams.videos} "
                                                      f"videos)" for name, dim, row in
                                                      zip(streams.names, streams.dims, present)))
            return
        if list(zip(streams.names, streams.dims)) != self._layout:
            raise UserError(f"the {split_name} videos have other streams ({streams.names}, widths {streams.dims}) "
                            f"than training's ({self._layout}); give every split the same feature sets")

    def train_split(self):
        dataset = self._stream_set("train", train=True)
        self._sets["train_set"] = dataset
        log(f"training: {len(dataset)} {'windows of frames' if self.frame_level else 'videos'} of "
            f"{self.read_split('train').source}")
        return dataset, self.read_split("train").ids

    def val_split(self):
        if "val_set" not in self._sets:
            self._sets["val_set"] = self._stream_set("val")
        return self._sets["val_set"]

    def test_split(self):
        if "test_set" not in self._sets:
            self._sets["test_set"] = self._stream_set("test")
        return self._sets["test_set"]

    def check_inputs(self) -> None:
        """The validation and test files are read before training, so that a bad one stops the run at once."""
        self.read_split("val"), self.read_split("test")

    def train_augment(self, img_size):
        return StreamAugment(self._sets["train_set"])

    def eval_collate(self, samples):
        return collate_eval(samples, self.window)

    def input_transform(self, img_size):
        return _identity

    def random_targets(self, count: int, generator):
        width = self.window if self.frame_level else len(self.track.label_names)
        return torch.rand(count, width, generator=generator)

    # ---- model
    @property
    def output_width(self) -> int:
        return self.window if self.frame_level else len(self.track.label_names)

    def inputs_config(self) -> dict:
        backbone = None if self.backbone is None else self.backbone.describe()
        return dict(track=self.track.name, backbone=backbone, frames_per_video=self.frames_per_video,
                    audio=None if self.audio is None else self.audio.describe(), text=self.text_choice,
                    track_features=self._stream_features(self.read_split("train")), max_tokens=self.max_tokens,
                    window=self.window)

    def model_config(self) -> dict:
        a = self.args
        if not hasattr(self, "_layout"):
            self.train_split()
        return dict(name="video", streams=[list(pair) for pair in self._layout], width=a.width, layers=a.layers,
                    heads=a.heads, dropout=a.dropout, out_width=1 if self.frame_level else self.output_width,
                    level=self.track.level, inputs=self.inputs_config())

    def check_model_flags(self, config: dict, path: str) -> None:
        from engine.task import check_model_flags

        check_model_flags(config, self.args, path, self.model_flags)

    def load_pretrained(self, model) -> None:
        log(f"video model from random weights over the streams {', '.join(name for name, _ in self._layout)}")

    def load_for_eval(self, path: str):
        """The checkpoint decides the streams: its backbone, sound, text encoder and feature sets are used unless
        the flags name others (a backbone moved since training: --backbone-ckpt)."""
        from models import build_model
        from models.weights import load_exactly
        from utils.checkpoint import load_checkpoint

        checkpoint = load_checkpoint(path)
        config = checkpoint.get("model_config", {}) if isinstance(checkpoint, dict) else {}
        check_model_name(self, config, path)
        self.check_model_flags(config, path)
        inputs = config.get("inputs", {})
        if inputs.get("track") != self.track.name:
            raise UserError(f"{path} was trained on the {inputs.get('track')} track, not --track {self.track.name}")
        typed = set(self.args.typed)
        backbone = inputs.get("backbone")
        if "backbone_ckpt" not in typed:  # where it was recorded, else a file of its name beside the checkpoint
            recorded = backbone["backbone"] if backbone else None
            self.backbone_path = recorded and feature_store.find_backbone(recorded, path)
            if recorded and self.backbone_path is None:
                raise UserError(f"{path} was trained on the features of {recorded}, which is neither there nor "
                                f"beside it (in {os.path.dirname(os.path.abspath(path))}); put it there or pass "
                                f"--backbone-ckpt")
        if backbone and "features" not in typed:
            self.parts = ",".join(backbone["parts"])
        audio = inputs.get("audio")
        if "audio" not in typed:
            self.audio_choice = audio["audio"] if audio else "none"
            if audio:
                self.audio_layer, self.audio_window = audio.get("layer"), float(audio["window"])
        if "text" not in typed:
            self.text_choice = inputs.get("text", "none")
        if "track_features" not in typed:
            self._feature_set = list(inputs.get("track_features", []))
        self.frames_per_video = inputs.get("frames_per_video", self.frames_per_video)
        self.max_tokens = inputs.get("max_tokens", self.max_tokens)
        if self.frame_level and inputs.get("window"):
            self.window = int(inputs["window"])
        if self.backbone is not None and backbone and self.backbone.key != backbone.get("key"):
            raise UserError(f"{path} was trained on the features of {backbone.get('backbone')} (key "
                            f"{str(backbone.get('key'))[:16]}), not those of {self.backbone.path} (key "
                            f"{self.backbone.key[:16]}); name the same backbone, parts and precision")
        self._layout = [tuple(pair) for pair in config["streams"]]
        self.decision = dict(checkpoint.get("decision") or {})
        model = build_model(config)
        load_exactly(model, checkpoint["model"], path, "video model")
        return model

    def param_groups(self, model) -> list[dict]:
        from utils.optim import decay_groups

        return decay_groups(model, self.args.weight_decay)

    def scales_lr(self) -> bool:
        return False

    # ---- training and prediction
    def loss(self, model, batch):
        inputs, targets = batch
        outputs = model(*inputs).float()
        known = targets != MISSING_FRAME_LABEL
        if self.frame_level:
            known = known & inputs[1]  # padding positions of the face stream
        if not known.any():
            return outputs.sum() * 0.0, {}
        loss = torch.nn.functional.binary_cross_entropy_with_logits(outputs[known], targets[known])
        return loss, {"bce": loss.detach()}

    def predict(self, model, inputs):
        return model(*inputs).reshape(inputs[0].shape[0], -1)

    # ---- metrics and files
    def probabilities(self, outputs: np.ndarray, dataset: StreamSet, seen=None) -> tuple[np.ndarray, np.ndarray]:
        """Outputs -> (probabilities per video (videos, width), or per face frame, and which were predicted)."""
        seen = np.ones(len(outputs), bool) if seen is None else seen
        if self.frame_level:
            values, predicted = dataset.rows(outputs, seen)
            return _sigmoid(values), predicted
        return _sigmoid(outputs), seen

    def labels(self, split_name: str) -> np.ndarray | None:
        split = self.read_split(split_name)
        if not self.frame_level:
            return split.labels()
        parts = [item.frame_labels for item in split.items]
        if any(part is None for part in parts):
            return None
        return np.concatenate([np.asarray(part, np.float32) for part in parts]) if parts else None

    def val_metrics(self, outputs: np.ndarray) -> dict:
        probabilities, _ = self.probabilities(outputs, self.val_split())
        return self.track.metrics(probabilities, self.labels("val"))

    def checkpoint_extras(self) -> dict:
        return {"decision": dict(self.decision)} if self.decision else {}

    def inference_settings(self) -> dict:
        return self.checkpoint_extras()

    def choose_decision(self, val_probabilities: np.ndarray) -> dict:
        """The track's decision settings for the files: a typed --threshold; else those the checkpoint brought
        (--eval); else chosen on validation by the track (``tune``); none for a track that decides nothing."""
        tune = getattr(self.track, "tune", None)
        if tune is None:
            return {}
        if self.args.threshold != "auto":
            return {"threshold": float(self.args.threshold)}
        if self.decision:
            return dict(self.decision)
        labels = self.labels("val")
        if labels is None:
            return {}
        chosen = tune(val_probabilities, labels)
        log("chosen on validation: " + ", ".join(f"{key} {value:g}" for key, value in chosen.items()))
        return chosen

    def ensemble_space(self, outputs):
        return np.asarray(outputs, dtype=np.float64)

    def output_space(self, values):
        return values

    def use_ensemble_settings(self, first_path, first_extras) -> None:
        pass

    def epoch_figures(self, model, device, autocast) -> dict:
        return {}

    def names(self, split_name: str) -> list[str]:
        split = self.read_split(split_name)
        if not self.frame_level:
            return split.ids
        return [name for item in split.items for name in (item.frame_ids or [f"{item.id}/{frame}" for frame in
                                                                          item.frames])]

    def write_outputs(self, out_dir, val_outputs, test_outputs, test_seen, checkpoint_path) -> dict:
        val_probabilities, _ = self.probabilities(val_outputs, self.val_split())
        val = self.track.metrics(val_probabilities, self.labels("val"))
        self.decision = self.choose_decision(val_probabilities)
        if self.decision:  # the scores of the files, and those of the default decision beside them
            default = {f"{key}_default_decision": value for key, value in val.items() if key == self.track.main_metric}
            val = {**self.track.metrics(val_probabilities, self.labels("val"), **self.decision), **default,
                   **self.decision}
        write_metrics(out_dir, "val", val)
        self.write_table(os.path.join(out_dir, "val_predictions.csv"), self.names("val"), val_probabilities)
        if test_outputs is not None:
            probabilities, predicted = self.probabilities(test_outputs, self.test_split(), test_seen)
            if not predicted.all():
                fill = probabilities[predicted].mean(0) if predicted.any() else 0.5
                warn(f"{int((~predicted).sum())} test {'frames' if self.frame_level else 'videos'} could not be "
                     f"predicted; they take the mean prediction of the others")
                probabilities[~predicted] = fill
            path = os.path.join(out_dir, self.track.submission_file)
            self.track.write_submission(path, self.names("test"), probabilities, **self.decision)
            log(f"wrote {path} ({len(probabilities)} rows, checked by reading it back)")
            labels = self.labels("test")
            if labels is not None:
                write_metrics(out_dir, "test", self.track.metrics(probabilities, labels, **self.decision))
        save_figures(self.figures(val_probabilities), out_dir)
        return val

    def write_table(self, path: str, names, probabilities: np.ndarray) -> None:
        from utils.atomic import atomic_write

        columns = self.track.label_names
        values = probabilities.reshape(len(names), -1)
        with atomic_write(path) as handle:
            handle.write(",".join(("id", *columns)) + "\n")
            for name, row in zip(names, values):
                handle.write(",".join((f'"{name}"' if "," in name else name, *(f"{v:.6f}" for v in row))) + "\n")

    def figures(self, val_probabilities: np.ndarray) -> dict:
        from engine import plots

        labels = self.labels("val")
        if labels is None:
            return {}
        return {"val_scatter": plots.label_scatter(val_probabilities.reshape(len(labels), -1),
                                                   labels.reshape(len(labels), -1), self.track.label_names,
                                                   f"{self.track.title}: validation")}

    def demo_score(self, out_dir: str):
        path = os.path.join(out_dir, "test_metrics.json")
        labels, train = self.labels("test"), self.labels("train")
        if not os.path.isfile(path) or labels is None or train is None:
            return None
        with open(path) as handle:
            test = json.load(handle)
        constant = np.broadcast_to(train[train != MISSING_FRAME_LABEL].mean(0) if self.frame_level
                                   else train.mean(0), labels.shape).copy()
        baseline = self.track.metrics(constant, labels)[self.track.main_metric]
        key = self.track.main_metric
        return f"synthetic test {key} ({self.track.name})", test[key], baseline


def threshold_flag(text):
    """--threshold: auto, or a probability in (0, 1)."""
    return text if text == "auto" else open_unit_interval(text)


def _identity(inputs):
    return inputs
