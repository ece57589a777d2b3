"""Specification of the synthetic single-task tracks (datasets/synthetic/, track "tracks"): the ABAW2-8 per-video
layout, its label codes, its agreement with the MTL set of the same seed, determinism and the command line.

Files are read here with plain string handling, independently of the generator and the project's loaders.
"""

import json
import os
import subprocess
import sys

import pytest

from datasets import synthetic
from tests.test_synthetic import all_files
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAMS = {"videos": 12, "frames": 12, "size": 32, "seed": 3}  # seed 3: some frame numbers are skipped
ANNOTATIONS = "6th ABAW Annotations"
CHALLENGES = {"VA": "VA_Estimation_Challenge", "EXPR": "EXPR_Recognition_Challenge", "AU": "AU_Detection_Challenge"}
SETS = {"train": "Train_Set", "val": "Validation_Set", "test": "Test_Set"}
HEADERS = {"VA": "valence,arousal", "EXPR": "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
           "AU": "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"}
MISSING = {"VA": "-5,-5", "EXPR": "-1", "AU": ",".join(["-1"] * 12)}  # a line without a label
VA_SAMPLE = "CVPR_6th_ABAW_VA_test_set_sample.txt"
EXPR_SAMPLE = "CVPR_6th_ABAW_Expr_test_set_sample.txt"
AU_TEST_NAMES = os.path.join("names_of_videos_in_each_test_set", "Action_Unit_Detection_Challenge_test_set_release.txt")


def read_lines(path):
    with open(path, "rb") as handle:
        data = handle.read()
    assert b"\r" not in data and data.endswith(b"\n")
    return data.decode("utf-8").split("\n")[:-1]


def annotation_files(root):
    """(track, split) -> {video: data lines} of every annotation file."""
    files = {}
    for track, challenge in CHALLENGES.items():
        for split, set_dir in SETS.items():
            folder = os.path.join(root, ANNOTATIONS, challenge, set_dir)
            files[track, split] = {}
            for name in sorted(os.listdir(folder)):
                assert name.endswith(".txt")
                lines = read_lines(os.path.join(folder, name))
                assert lines[0] == HEADERS[track]
                files[track, split][name[:-4]] = lines[1:]
    return files


def crops(root, video):
    """Frame numbers of the face crops of ``video``."""
    names = os.listdir(os.path.join(root, "cropped_aligned", video))
    assert all(len(name) == 9 and name.endswith(".jpg") for name in names)
    return {int(name[:5]) for name in names}


def mtl_labels(root):
    """image -> (va text, expression text, AU text) of the MTL set's three annotation files."""
    labels = {}
    for name in ("training_set_annotations.txt", "validation_set_annotations.txt", "test_set_annotations.txt"):
        for line in read_lines(os.path.join(root, name))[1:]:
            fields = line.split(",")
            labels[fields[0]] = (",".join(fields[1:3]), fields[3], ",".join(fields[4:]))
    return labels


@pytest.fixture(scope="module")
def tracks_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracks")
    synthetic.generate("tracks", root, workers=1, progress=False, **PARAMS)
    return root


@pytest.fixture(scope="module")
def mtl_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("mtl")
    synthetic.generate("mtl", root, workers=1, progress=False, **PARAMS)
    return root


# determinism


def test_same_seed_writes_identical_bytes_whatever_the_worker_count(tmp_path, tracks_set):
    synthetic.generate_tracks(tmp_path, workers=2, progress=False, **PARAMS)
    again = all_files(tmp_path)
    assert len(again) > 12 * 12
    assert again == all_files(tracks_set)


# layout and formats


def test_layout_has_the_released_names(tracks_set):
    root = tracks_set
    for challenge in CHALLENGES.values():
        for set_dir in SETS.values():
            assert os.listdir(os.path.join(root, ANNOTATIONS, challenge, set_dir))
    for name in (VA_SAMPLE, EXPR_SAMPLE, AU_TEST_NAMES, "synthetic_meta.json"):
        assert os.path.isfile(os.path.join(root, name))
    assert len(os.listdir(os.path.join(root, "cropped_aligned"))) == 12
    assert synthetic.is_generated(root, "tracks", **PARAMS)


def test_every_annotation_file_has_its_header_a_line_per_frame_and_the_label_codes(tracks_set):
    for (track, _), videos in annotation_files(tracks_set).items():
        for video, lines in videos.items():
            assert len(lines) > max(crops(tracks_set, video))  # line i is frame i, and some frames have no crop
            for line in lines:
                fields = line.split(",")
                if track == "VA":
                    assert len(fields) == 2
                    assert fields == ["-5", "-5"] or all(-1 <= float(value) <= 1 for value in fields)
                elif track == "EXPR":
                    assert len(fields) == 1 and int(fields[0]) in range(-1, 8)
                else:
                    assert len(fields) == 12
                    assert fields == ["-1"] * 12 or set(fields) <= {"0", "1"}


def test_only_training_va_and_au_have_missing_codes_and_only_on_frames_with_a_crop(tracks_set):
    """Validation and test are fully annotated, as in the MTL set; a video without EXPR labels is left out of EXPR."""
    for (track, split), videos in annotation_files(tracks_set).items():
        codes = 0
        for video, lines in videos.items():
            with_crop = crops(tracks_set, video)
            for number, line in enumerate(lines, start=1):
                if line == MISSING[track]:
                    assert number in with_crop
                    codes += 1
        if split == "train" and track != "EXPR":
            assert codes > 0
        else:
            assert codes == 0, (track, split)


def test_labels_equal_the_mtl_labels_of_the_same_frame(tracks_set, mtl_set):
    """Same videos and crops as the MTL set; on a frame with a crop, VA and AU are the MTL row's (missing codes
    included) and EXPR is the MTL label wherever the MTL set has one."""
    assert all_files(tracks_set / "cropped_aligned") == all_files(mtl_set / "cropped_aligned")
    mtl = mtl_labels(mtl_set)
    compared = {"VA": 0, "EXPR": 0, "AU": 0}
    for (track, _), videos in annotation_files(tracks_set).items():
        column = {"VA": 0, "EXPR": 1, "AU": 2}[track]
        for video, lines in videos.items():
            for number, line in enumerate(lines, start=1):
                image = f"{video}/{number:05d}.jpg"
                if image not in mtl:
                    assert not os.path.exists(tracks_set / "cropped_aligned" / image)
                    continue
                if track == "EXPR" and mtl[image][1] == "-1":
                    continue
                assert line == mtl[image][column], (track, image)
                compared[track] += 1
    assert min(compared.values()) > 50


def test_each_track_annotates_its_own_subset_of_every_split(tracks_set):
    files = annotation_files(tracks_set)
    for split in SETS:
        va, expr, au = (set(files[track, split]) for track in CHALLENGES)
        assert expr and au  # every track has every split
        assert expr | au <= va
        assert expr & au  # some videos are in all three tracks
        assert va - (expr & au)  # and some are left out of one
        assert not (va - expr) & (va - au)  # never out of both
    all_va = set().union(*(files["VA", split] for split in SETS))
    assert all_va == set(os.listdir(tracks_set / "cropped_aligned"))


def test_some_lines_have_no_crop_inside_and_after_each_video(tracks_set):
    """Frame numbers skipped between crops, and a few lines past the last crop, still carry labels."""
    gaps = 0
    for (track, split), videos in annotation_files(tracks_set).items():
        for video, lines in videos.items():
            with_crop = crops(tracks_set, video)
            assert 1 in with_crop and len(lines) - max(with_crop) in range(1, 5)
            gaps += sum(number not in with_crop for number in range(1, max(with_crop)))
            for number in set(range(1, len(lines) + 1)) - with_crop:
                assert lines[number - 1] != MISSING[track], (track, split, video, number)
    assert gaps > 0


def test_test_samples_list_every_frame_of_their_test_videos(tracks_set):
    files = annotation_files(tracks_set)
    for track, name, header in (("VA", VA_SAMPLE, "image_location,valence,arousal"),
                                ("EXPR", EXPR_SAMPLE, "image_location," + HEADERS["EXPR"])):
        lines = read_lines(tracks_set / name)
        assert lines[0] == header
        expected = [f"{video}/{number:05d}.jpg," for video, video_lines in files[track, "test"].items()
                    for number in range(1, len(video_lines) + 1)]
        assert sorted(lines[1:]) == sorted(expected) and len(set(lines[1:])) == len(expected)
    assert sorted(read_lines(tracks_set / AU_TEST_NAMES)) == sorted(files["AU", "test"])


def test_meta_counts_videos_and_lines_per_track_and_split(tracks_set):
    counts = json.loads((tracks_set / "synthetic_meta.json").read_text())["counts"]
    assert counts["images"] == 12 * 12
    for (track, split), videos in annotation_files(tracks_set).items():
        assert counts["videos"][track][split] == len(videos)
        assert counts["frames"][track][split] == sum(len(lines) for lines in videos.values())


# bookkeeping, CLI


def test_is_generated_and_the_folder_rules_are_those_of_the_other_tracks(tmp_path, mtl_set):
    assert not synthetic.is_generated(tmp_path, "tracks", **PARAMS)
    with pytest.raises(UserError, match="synthetic mtl set"):
        synthetic.generate_tracks(mtl_set, workers=1, progress=False, **PARAMS)
    (tmp_path / ANNOTATIONS).mkdir()
    with pytest.raises(UserError, match="did not write"):
        synthetic.generate_tracks(tmp_path, workers=1, progress=False, **PARAMS)
    assert not synthetic.is_generated(mtl_set, "tracks", **PARAMS)


def test_cli_writes_the_set_and_exits_0(tmp_path):
    done = subprocess.run([sys.executable, "-m", "datasets.synthetic", "tracks", str(tmp_path), "--videos", "4",
                           "--frames", "3", "--size", "32", "--seed", "1", "--workers", "1", "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("synthetic tracks: wrote 12 images")
    assert synthetic.is_generated(tmp_path, "tracks", videos=4, frames=3, size=32, seed=1)
    assert len(os.listdir(tmp_path / ANNOTATIONS / CHALLENGES["VA"] / SETS["train"])) == 2
