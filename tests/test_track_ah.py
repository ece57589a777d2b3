"""The Ambivalence/Hesitancy track (datasets/tracks/ah.py), its text encoder (models/text.py) and its synthetic set
(datasets/synthetic/ah.py): readers on hand-written files with the release's quirks, the metric against
scikit-learn, the submission files re-read, bad input, and the generator's determinism and learnability."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from sklearn.metrics import f1_score

from datasets import synthetic
from datasets.synthetic import ah as synthetic_ah
from datasets.tracks import ah
from datasets.tracks.ah import FRAME_TRACK, TRACK
from utils.errors import UserError

V1 = "Videos/83033/Visite 1/83033_Question_1_2025-05-07_15-46-28_Video.mp4"  # spaces in a folder name
V2 = "Videos/83033/Visite 1/83033_Question_2_2025-05-07_15-48-02_Video.mp4"
V3 = "Videos/84100/Visite_1/84100_Question_7_2025-06-01_09-00-00_Video.mp4"

TRANSCRIPT_V1 = """text: " Well, I mean, yes. I don't know, maybe. Fine."
chunks:
- language: english
  text: " Well, I mean, yes."
  timestamp: !!python/tuple
  - 0.5
  - 12.0
- language: english
  text: " I don't know, maybe."
  timestamp: !!python/tuple
  - 12.5
  - 29.5
- language: english
  text: " Fine."
  timestamp: !!python/tuple
  - 1.25
  - null
"""


def _touch(path, data=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def _video_level_dir(root) -> str:
    """Three videos: V1 with sound, crops frame-0/2/10 and a .yml; V2 with crops only (no video file, so no sound)
    and no .yml; V3 with a video file but no crops."""
    data = str(root)
    _touch(os.path.join(data, V1))
    _touch(os.path.join(data, V3))
    for number in (10, 0, 2):  # numbered from 0, sorted as numbers, not as text
        _touch(os.path.join(data, "cropped-aligned-faces", V1, f"frame-{number}.jpg"))
    _touch(os.path.join(data, "cropped-aligned-faces", V1, "notes.txt"))
    _touch(os.path.join(data, "cropped-aligned-faces", V2, "frame-5.jpg"))
    stem = os.path.splitext(os.path.basename(V1))[0]
    _touch(os.path.join(data, "transcription", V1, stem + ".yml"), TRANSCRIPT_V1.encode())
    lines = {"train": [f"{V1},1,Well, I mean, yes. I don't know, maybe. Fine.",
                       f"{V2},0,I walk every day, usually in the morning, yes.", f"{V3},0,"],
             "val": [f"{V2},1,Um, no."], "test": [f"{V3},0,Yes, sure.", f"{V1},0,Hmm, well."]}
    for split, rows in lines.items():
        _touch(os.path.join(data, "split", f"{split}.txt"), ("\n".join(rows) + "\n").encode())
    return data


def test_video_split_reads_the_release_quirks(tmp_path):
    data = _video_level_dir(tmp_path)
    assert TRACK.find(data, "train") and not TRACK.find(str(tmp_path / "none"), "train")
    split = TRACK.read_split(data, "train")
    assert split.ids == [V1, V2, V3]  # the file's order
    first, second, third = split.items
    assert first.frames == [f"{V1}/frame-0.jpg", f"{V1}/frame-2.jpg", f"{V1}/frame-10.jpg"]
    assert first.frame_numbers.tolist() == [1, 3, 11]  # frame-N is frame N counted from 0
    assert first.frames_root == os.path.join(data, "cropped-aligned-faces")
    assert all(os.path.isfile(os.path.join(first.frames_root, frame)) for frame in first.frames)
    assert first.audio == os.path.join(data, V1)
    # chunk 3 restarts in the recogniser's next window: it follows chunk 2's end; the last end is null
    assert first.transcript == [(0.5, 12.0, "Well, I mean, yes."), (12.5, 29.5, "I don't know, maybe."),
                                (30.75, None, "Fine.")]
    assert second.audio is None and second.frames == [f"{V2}/frame-5.jpg"] and second.frame_numbers.tolist() == [6]
    assert second.transcript == [(None, None, "I walk every day, usually in the morning, yes.")]  # commas kept
    assert third.frames == [] and third.transcript is None and third.audio == os.path.join(data, V3)
    assert split.labels().ravel().tolist() == [1.0, 0.0, 0.0]


def test_test_split_labels_are_placeholders_unless_the_synthetic_label_file_exists(tmp_path):
    data = _video_level_dir(tmp_path)
    test = TRACK.read_split(data, "test")
    assert test.ids == [V3, V1] and all(item.label is None for item in test.items) and test.labels() is None
    _touch(os.path.join(data, "split", "test_labels.txt"), f"{V1},1,Hmm, well.\n{V3},0,Yes, sure.\n".encode())
    assert TRACK.read_split(data, "test").labels().ravel().tolist() == [0.0, 1.0]


def test_an_unsafe_yaml_tag_is_refused_and_the_tuple_tag_is_admitted(tmp_path):
    safe = tmp_path / "safe.yml"
    safe.write_text("chunks:\n- text: hi\n  timestamp: !!python/tuple [0.0, null]\n")
    assert ah.read_transcript(str(safe)) == [(0.0, None, "hi")]
    marker = tmp_path / "ran"
    for tag in (f"!!python/object/apply:os.system ['touch {marker}']", "!!python/name:os.system",
                "!!python/object:collections.OrderedDict {}"):
        unsafe = tmp_path / "unsafe.yml"
        unsafe.write_text(f"text: {tag}\nchunks: []\n")
        with pytest.raises(UserError, match=r"unsafe\.yml.*not readable as safe YAML") as error:
            ah.read_transcript(str(unsafe))
        assert "\n" not in str(error.value)
    assert not marker.exists()


@pytest.mark.parametrize("text, reason", [
    ("- just\n- a list\n", "not a transcript"),
    ("chunks:\n- text: hi\n  timestamp: [1.0]\n", "chunk 1 is not"),
    ("chunks:\n- text: hi\n  timestamp: !!python/tuple [soon, 2.0]\n", "chunk 1: timestamp 'soon'"),
    ("chunks: {a: 1}\n", "not a transcript"),
])
def test_a_yml_that_is_not_a_transcript_is_a_one_line_error(tmp_path, text, reason):
    path = tmp_path / "bad.yml"
    path.write_text(text)
    with pytest.raises(UserError, match=re.escape(reason)):
        ah.read_transcript(str(path))


@pytest.mark.parametrize("line, reason", [
    (f"{V1},1", r"train\.txt:2: expected 3 columns"),
    (f"{V1};1;text", r"train\.txt:2: expected 3 columns"),
    (f"{V2},yes,Fine, thanks.", r"train\.txt:2: label must be 0 or 1, got 'yes'"),
    (f"{V2},2,Fine.", r"train\.txt:2: label must be 0 or 1"),
    ("Videos/1/Visite_1/1_Question_1_x_Video.mp4,0,Fine.", r"train\.txt:2: an id without a video"),
    (f"{V1},0,Again.", r"train\.txt:2: video .* already listed on line 1"),
])
def test_bad_split_lines_name_file_line_and_reason(tmp_path, line, reason):
    data = _video_level_dir(tmp_path)
    _touch(os.path.join(data, "split", "train.txt"), f"{V1},1,Yes.\n{line}\n".encode())
    with pytest.raises(UserError, match=reason) as error:
        TRACK.read_split(data, "train")
    assert "\n" not in str(error.value)


def test_macro_f1_matches_scikit_learn_and_skips_missing_frames():
    rng = np.random.default_rng(3)
    for _ in range(20):
        labels = (rng.random(200) < rng.uniform(0.1, 0.5)).astype(int)
        p1 = np.clip(labels * rng.uniform(0, 0.6) + rng.random(200) * 0.7, 0, 1)
        threshold = rng.uniform(0.3, 0.7)
        scores = ah.metrics(p1, labels, threshold)
        predicted = (p1 >= threshold).astype(int)
        assert scores["f1_macro"] == pytest.approx(f1_score(labels, predicted, average="macro"), abs=1e-12)
        assert scores["f1_positive"] == pytest.approx(f1_score(labels, predicted), abs=1e-12)
        assert scores["positive_rate"] == pytest.approx(predicted.mean())
        assert TRACK.metrics(np.stack([1 - p1, p1], 1), labels[:, None].astype(np.float32), threshold) == scores
    frame_labels = np.array([1, 0, -1, 1, -1, 0])
    p1 = np.array([0.9, 0.2, 0.9, 0.1, 0.0, 0.7])
    keep = frame_labels >= 0
    assert FRAME_TRACK.metrics(p1, frame_labels)["f1_macro"] == pytest.approx(
        f1_score(frame_labels[keep], (p1[keep] >= 0.5).astype(int), average="macro"))
    # a constant prediction: one class never predicted scores F1 0 for it
    assert ah.metrics(np.zeros(10), np.array([1, 1, 1] + [0] * 7))["f1_macro"] == pytest.approx(
        f1_score([1, 1, 1] + [0] * 7, [0] * 10, average="macro"))


def test_submission_probabilities_sum_to_exactly_one_as_floats_read_from_text(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"Videos/{k}/Visite_1/{k}_Question_1_2025-01-01_10-00-00_Video.mp4" for k in range(3000)]
    p1 = np.concatenate([rng.random(2990), [0.0, 1.0, 0.5, 0.49995, 0.99995, 1e-9, 0.3, 0.7, 0.1, 0.9]])
    path = tmp_path / ah.trial_name(0)
    TRACK.write_submission(str(path), ids, p1, threshold=0.4)
    lines = path.read_text().splitlines()
    assert len(lines) == len(ids) and lines[0].startswith(ids[0] + ",")  # no header, the given order
    for line, value in zip(lines, p1):
        video, p0_text, p1_text, pred = line.split(",")
        assert float(p0_text) + float(p1_text) == 1.0
        assert p1_text == f"{value:.4f}" and pred == str(int(float(p1_text) >= 0.4))
    read = TRACK.read_submission(str(path), reference_ids=ids)
    assert read["ids"] == ids and np.allclose(read["p1"], p1, atol=5e-5)


def test_submission_without_probabilities_and_the_trial_names(tmp_path):
    path = tmp_path / ah.trial_name(4)
    TRACK.write_submission(str(path), [V1, V2], np.array([[0.2, 0.8], [0.7, 0.3]]), with_probabilities=False)
    assert path.read_text() == f"{V1},1\n{V2},0\n"
    read = ah.read_submission(str(path), reference_ids=[V1, V2])
    assert read["p1"] is None and read["pred"].tolist() == [1, 0]
    assert [ah.trial_name(k) for k in range(5)] == [f"trial-{k}.txt" for k in range(5)]
    for bad in (-1, 5, 1.0, True):
        with pytest.raises(UserError, match="trial-0.txt to trial-4.txt"):
            ah.trial_name(bad)


@pytest.mark.parametrize("text, reason", [
    (f"{V1},0.5,0.6,1\n{V2},0.5,0.5,0\n", r"trial-0\.txt:1: p0 \+ p1 = .*not exactly 1"),
    (f"{V1},0.2,0.8,1\n{V2},0.7,0.3,0\n{V3},0.1,0.9,1\n", r"1 videos are not in the reference"),
    (f"{V1},0.2,0.8,1\n", r"1 videos of the reference are missing"),
    (f"{V2},0.7,0.3,0\n{V1},0.2,0.8,1\n", r"trial-0\.txt:1: video .* where the reference order has"),
    (f"{V1},0.2,0.8,2\n{V2},0.7,0.3,0\n", r"pred must be 0 or 1"),
    (f"{V1},0.2,0.8,1\n{V2},0\n", r"trial-0\.txt:2: expected 3 values after the video path"),
    (f"{V1},1.2,-0.2,1\n{V2},0.7,0.3,0\n", r"probabilities must lie in \[0, 1\]"),
    (f"{V1},0.2,0.8,1\n{V1},0.7,0.3,0\n", r"appears twice"),
    ("", r"no predictions"),
])
def test_a_bad_submission_is_refused_on_reading(tmp_path, text, reason):
    path = tmp_path / "trial-0.txt"
    path.write_text(text)
    with pytest.raises(UserError, match=reason):
        ah.read_submission(str(path), reference_ids=[V1, V2])


def test_a_pred_may_disagree_with_half_when_the_writer_used_its_own_threshold(tmp_path):
    path = tmp_path / "trial-1.txt"
    TRACK.write_submission(str(path), [V1, V2], np.array([0.35, 0.2]), threshold=0.3)
    assert [line.split(",")[-1] for line in path.read_text().splitlines()] == ["1", "0"]
    assert ah.read_submission(str(path))["pred"].tolist() == [1, 0]


# ---- frame level (ABAW8)

F1 = "82557/Visite 1/82557_Question_1_2024-08-22 14-46-11_Video.mp4"
F2 = "82557/Visite 1/82557_Question_2_2024-08-22 14-50-00_Video.mp4"
F3 = "90001/Visite 1/90001_Question_3_2024-09-01 10-00-00_Video.mp4"


def _frame_level_dir(root) -> str:
    data = str(root)
    annotation = (f'"{F1}":\n  global_ah: 1\n  frame_annotation:\n'
                  f'  - ["{F1}/frame-10.jpg", 1]\n  - ["{F1}/frame-0.jpg", 0]\n  - ["{F1}/frame-2.jpg", 1]\n'
                  f'"{F2}":\n  global_ah: 0\n  frame_annotation:\n  - ["{F2}/frame-0.jpg", 0]\n')
    _touch(os.path.join(data, "annotation.yml"), annotation.encode())
    _touch(os.path.join(data, "default-split", "train.txt"), f"{F1}\n{F2}\n".encode())
    _touch(os.path.join(data, "default-split", "val.txt"), f"{F2}\n".encode())
    _touch(os.path.join(data, "trial-0.txt"), f"{F3}/frame-0.jpg,0\n{F3}/frame-1.jpg,0\n{F1}/frame-3.jpg,0\n".encode())
    for frame in ("frame-0.jpg", "frame-2.jpg", "frame-10.jpg"):
        _touch(os.path.join(data, "cropped-aligned-faces", F1, frame))
    _touch(os.path.join(data, "videos", F1))
    return data


def test_frame_level_reads_annotation_split_and_example_submission(tmp_path):
    data = _frame_level_dir(tmp_path)
    assert FRAME_TRACK.find(data, "train") and FRAME_TRACK.find(data, "test")
    train = FRAME_TRACK.read_split(data, "train")
    assert train.ids == [F1, F2]
    first = train.items[0]
    assert first.frames == [f"{F1}/frame-0.jpg", f"{F1}/frame-2.jpg", f"{F1}/frame-10.jpg"]
    assert first.frame_ids == first.frames and first.frame_numbers.tolist() == [1, 3, 11]
    assert first.frame_labels.tolist() == [0, 1, 1] and first.label is None
    assert first.frames_root == os.path.join(data, "cropped-aligned-faces")
    assert first.audio == os.path.join(data, "videos", F1) and train.items[1].audio is None
    test = FRAME_TRACK.read_split(data, "test")
    assert test.ids == [F3, F1]  # the example file's order
    assert test.items[0].frame_ids == [f"{F3}/frame-0.jpg", f"{F3}/frame-1.jpg"]
    assert test.items[0].frame_labels is None  # the example's labels are placeholders
    _touch(os.path.join(data, "test_labels.txt"), f"{F3}/frame-0.jpg,1\n{F3}/frame-1.jpg,0\n".encode())
    labelled = FRAME_TRACK.read_split(data, "test")
    assert labelled.items[0].frame_labels.tolist() == [1, 0]
    assert labelled.items[1].frame_labels.tolist() == [-1]  # a frame the label file does not list


def test_frame_level_video_not_in_the_annotation_is_an_id_without_a_video(tmp_path):
    data = _frame_level_dir(tmp_path)
    _touch(os.path.join(data, "default-split", "val.txt"), f"{F2}\n{F3}\n".encode())
    with pytest.raises(UserError, match=r"val\.txt:2: an id without a video"):
        FRAME_TRACK.read_split(data, "val")


def test_frame_submission_keeps_the_example_order_and_is_re_read(tmp_path):
    data = _frame_level_dir(tmp_path)
    test = FRAME_TRACK.read_split(data, "test")
    frame_ids = [frame for item in test.items for frame in item.frame_ids]
    path = tmp_path / "out" / "trial-0.txt"
    FRAME_TRACK.write_submission(str(path), frame_ids, np.array([0.9, 0.1, 0.5]))
    assert path.read_text() == f"{F3}/frame-0.jpg,1\n{F3}/frame-1.jpg,0\n{F1}/frame-3.jpg,1\n"
    assert FRAME_TRACK.read_submission(str(path), reference_ids=frame_ids)[1].tolist() == [1, 0, 1]
    with pytest.raises(UserError, match="where the reference order has"):
        FRAME_TRACK.read_submission(str(path), reference_ids=frame_ids[::-1])


# ---- the text encoder

@pytest.fixture(scope="module")
def tiny_text_model(tmp_path_factory):
    """A random two-layer BERT with a WordPiece tokenizer over a small vocabulary, saved as save_pretrained does."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "um", "well", "i", "mean", "don", "'", "t", "know",
             "yes", "it", "was", "fine", ",", ".", "##s"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(folder))
    return str(folder)


def test_text_encoder_means_the_hidden_state_over_the_tokens(tiny_text_model):
    import torch

    from models.speech import folder_sha256
    from models.text import TextEncoder

    encoder = TextEncoder(tiny_text_model, "cpu")
    texts = ["um, well I mean", "", "yes it was fine.", "   "]
    vectors = encoder.encode(texts, batch_size=2)
    assert vectors.shape == (4, 16) and vectors.dtype == np.float32 and encoder.dim == 16
    assert not vectors[1].any() and not vectors[3].any()  # no words: zeros
    for k in (0, 2):  # alone and unpadded: the plain mean over every token, computed here
        tokens = encoder.tokenizer(texts[k], return_tensors="pt")
        with torch.no_grad():
            hidden = encoder.model(**tokens, output_hidden_states=True).hidden_states[-1][0]
        assert np.allclose(vectors[k], hidden.mean(0).numpy(), atol=1e-5)
    first_layer = TextEncoder(tiny_text_model, "cpu", layer=1)
    assert not np.allclose(first_layer.encode(texts[:1]), vectors[:1])
    described = encoder.describe()
    assert described["sha256"] == folder_sha256(tiny_text_model) and described["layer"] == 2


def test_text_encoder_without_the_model_is_a_one_line_error(tmp_path, tiny_text_model):
    from models.text import TextEncoder

    with pytest.raises(UserError, match=r"--text no-such/model-xyz: no such folder.*nothing is downloaded"):
        TextEncoder("no-such/model-xyz", "cpu")
    with pytest.raises(UserError, match="not a readable text encoder folder"):
        TextEncoder(str(tmp_path), "cpu")
    with pytest.raises(UserError, match="--text-layer 3"):
        TextEncoder(tiny_text_model, "cpu", layer=3)


# ---- the synthetic set

def _files(folder) -> dict:
    found = {}
    for base, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as handle:
                found[os.path.relpath(path, folder)] = handle.read()
    return found


@pytest.mark.slow
def test_synthetic_set_same_seed_same_bytes_whatever_the_workers(tmp_path):
    params = {"videos": 6, "frames": 20, "size": 32, "seed": 5}
    one = synthetic.generate(TRACK.synthetic, str(tmp_path / "one"), workers=1, progress=False, **params)
    synthetic_ah.generate(str(tmp_path / "two"), workers=2, progress=False, **params)
    first, second = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert first.keys() == second.keys() and all(first[name] == second[name] for name in first)
    assert one["counts"]["videos"] == {"train": 4, "val": 1, "test": 1}
    assert one["counts"]["images"] == sum(name.endswith(".jpg") and name.startswith("cropped-aligned-faces/Videos")
                                          for name in first)
    assert synthetic.is_generated(str(tmp_path / "one"), "ah", **params)
    assert not synthetic_ah.is_generated(str(tmp_path / "one"), **dict(params, seed=6))
    other = synthetic_ah.generate(str(tmp_path / "three"), workers=1, progress=False, **dict(params, seed=6))
    assert other["counts"]["images"] and _files(tmp_path / "three") != first


@pytest.mark.slow
def test_synthetic_set_reads_in_both_layouts_and_is_learnable(tmp_path):
    import cv2
    from sklearn.linear_model import LogisticRegression

    data = str(tmp_path / "ah")
    summary = synthetic_ah.generate(data, videos=60, frames=24, size=48, seed=0, workers=2, progress=False)
    videos = {split: TRACK.read_split(data, split) for split in ("train", "val", "test")}
    frames = {split: FRAME_TRACK.read_split(data, split) for split in ("train", "val", "test")}
    assert [len(videos[split].items) for split in videos] == [36, 12, 12]
    for split in ("train", "val", "test"):
        labels = videos[split].labels().ravel()  # the test's from split/test_labels.txt
        assert 0.2 <= labels.mean() <= 0.4
        # the same videos in both layouts: "<pid>/Visite 1/..._<date> <time>_Video.mp4" in ABAW8
        assert ["Videos/" + item.id.replace(" ", "_") for item in frames[split].items] == videos[split].ids
    assert all(" " in item.id for item in frames["train"].items)  # "Visite 1": spaces in names, as in ABAW8
    assert sum(item.audio is not None and os.path.getsize(item.audio) > 0 for item in videos["train"].items) == 36
    for item in videos["train"].items:
        starts = [start for start, _, _ in item.transcript]
        assert starts == sorted(starts) and item.transcript[-1][1] is None  # restarts made continuous; null end
        assert item.frames and item.frame_numbers[0] == 1
        positives = frames["train"].items[videos["train"].items.index(item)].frame_labels
        assert positives.max() == int(item.label[0])  # a positive video is one holding positive frames
    yml = open(os.path.join(data, "transcription", videos["train"].items[0].id,
                            os.path.basename(videos["train"].items[0].id)[:-4] + ".yml")).read()
    assert "!!python/tuple" in yml and yml.rstrip().endswith("- null")
    assert summary["counts"]["images"] == sum(len(item.frames) for split in videos.values() for item in split.items)

    # the words: counts of hesitation markers in the answer separate the classes on val
    markers = re.compile(r"\b(um|uh|hmm|i mean|don't know|not sure|hard to say|on the one hand)\b", re.IGNORECASE)

    def counts(split):
        return np.array([[len(markers.findall(" ".join(text for _, _, text in item.transcript)))]
                         for item in videos[split].items])

    train_y, val_y = videos["train"].labels().ravel(), videos["val"].labels().ravel()
    words = LogisticRegression(class_weight="balanced").fit(counts("train"), train_y)
    constant = max(f1_score(val_y, np.full_like(val_y, value), average="macro") for value in (0, 1))
    assert constant <= 0.45
    assert f1_score(val_y, words.predict(counts("val")), average="macro") >= constant + 0.3

    # the faces: each frame's distance from its video's median frame separates episode frames on val
    def distances(split):
        values, labels = [], []
        for item in frames[split].items:
            images = np.stack([cv2.imread(os.path.join(item.frames_root, frame), cv2.IMREAD_GRAYSCALE)
                               for frame in item.frames]).astype(np.float32)
            values.append(np.abs(images - np.median(images, 0)).mean((1, 2)))
            labels.append(item.frame_labels)
        return np.concatenate(values)[:, None], np.concatenate(labels)

    train_x, train_frames = distances("train")
    val_x, val_frames = distances("val")
    faces = LogisticRegression(class_weight="balanced").fit(train_x, train_frames)
    constant = max(f1_score(val_frames, np.full_like(val_frames, value), average="macro") for value in (0, 1))
    assert f1_score(val_frames, faces.predict(val_x), average="macro") >= constant + 0.1


def test_generator_command_line_writes_the_set_and_refuses_foreign_data(tmp_path, capsys):
    from datasets.synthetic import cli

    out = tmp_path / "out"
    assert cli.main(["ah", str(out), "--videos", "3", "--frames", "8", "--size", "32", "--workers", "1",
                     "--no-progress"]) == 0
    assert "synthetic ah: wrote" in capsys.readouterr().out
    assert synthetic.is_generated(str(out), "ah", videos=3, frames=8, size=32)
    assert TRACK.read_split(str(out), "train").ids and FRAME_TRACK.read_split(str(out), "test").ids
    with pytest.raises(SystemExit):
        cli.main(["ah", str(out), "--frames", "4"])
    assert "--frames: must be at least 8" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown parameters per_class"):
        synthetic_ah.generate(str(tmp_path / "other"), per_class=3)
    _touch(str(tmp_path / "real" / "split" / "train.txt"), f"{V1},1,Yes.\n".encode())
    assert cli.main(["ah", str(tmp_path / "real"), "--videos", "3", "--frames", "8", "--no-progress"]) == 2
    assert "already holds split that this generator did not write" in capsys.readouterr().err
    assert (tmp_path / "real" / "split" / "train.txt").read_text() == f"{V1},1,Yes.\n"


def test_the_tuned_threshold_is_the_candidate_with_the_best_macro_f1_nearest_half_on_ties():
    rng = np.random.default_rng(3)
    for _trial in range(20):
        n = int(rng.integers(1, 60))
        labels = rng.integers(0, 2, n)
        p1 = np.clip(labels * rng.uniform(0, 0.6) + rng.uniform(0, 0.6, n), 0, 1).round(int(rng.integers(1, 4)))
        labels[rng.random(n) < 0.1] = ah.FRAME_MISSING  # frames without annotation are left out
        keep = labels != ah.FRAME_MISSING
        chosen, scores = ah.tune_threshold(np.stack([1 - p1, p1], 1), labels[:, None])
        if not keep.any():
            assert chosen == 0.5 and scores == {}
            continue
        expected = {float(t): f1_score(labels[keep], (p1[keep] >= t).astype(int), labels=[0, 1], average="macro",
                                       zero_division=0) for t in ah.THRESHOLDS}
        assert scores == pytest.approx(expected, abs=1e-12)
        best = max(expected.values())
        ties = [t for t, f in expected.items() if f >= best - 1e-12]
        assert chosen == min(ties, key=lambda t: abs(t - 0.5))
        assert TRACK.tune(p1, labels[:, None].astype(np.float32)) == {"threshold": chosen}
