"""The per-video single-task tracks (ABAW2-8): reader quirks, joined labels, test lists, nearest-frame filling and the
submission formats, each against values written or re-read independently in the test."""

import csv
import os

import numpy as np
import pytest

from datasets.tracks import affwild2 as tracks
from datasets.tracks import single
from tests.test_data import write_jpeg, write_text
from utils.abaw import AU_NAMES, EXPR_NAMES
from utils.errors import UserError

VA_HEADER = "valence,arousal"
EXPR_HEADER = ",".join(EXPR_NAMES)
AU_HEADER = ",".join(AU_NAMES)
AU_ROW = "1,0,0,1,0,0,1,0,0,0,1,0"


@pytest.fixture
def layout(tmp_path):
    """Two videos; video A has frames 1, 2, 4 (no 3), video B frames 1, 2. VA and EXPR annotate both, AU only A."""
    images = tmp_path / "cropped_aligned"
    for name in ("vidA/00001.jpg", "vidA/00002.jpg", "vidA/00004.jpg", "vid_B_left/00001.jpg", "vid_B_left/00002.jpg"):
        write_jpeg(images / name)
    root = tmp_path / "5th ABAW Annotations"
    va = root / "VA_Estimation_Challenge" / "Train_Set"
    expr = root / "EXPR_Classification_Challenge" / "Train_Set"
    au = root / "AU_Detection_Challenge" / "Train_Set"
    for folder in (va, expr, au):
        folder.mkdir(parents=True)
    # CRLF, spaces, a trailing comma, a -5 in one value only, lines beyond the last image (frames 5 and 6)
    write_text(va / "vidA.txt", [VA_HEADER, "0.5,-0.25", " 0.125 , 0.75 ", "0.1,0.2", "-5,0.3", "0.0,0.0,", "1,1"],
               newline="\r\n")
    write_text(va / "vid_B_left.txt", ["Valence, Arousal", "-1,1", "0.25,0.5"])
    write_text(expr / "vidA.txt", [EXPR_HEADER, "4", "-1", "7", "2"])
    write_text(expr / "vid_B_left.txt", [EXPR_HEADER.lower(), "0", "5", ""])  # lower-case header, blank last line
    write_text(au / "vidA.txt", [AU_HEADER, AU_ROW, ",".join(["-1"] * 12), AU_ROW, AU_ROW])
    return tmp_path


def test_reader_accepts_crlf_spaces_trailing_comma_and_header_variants(layout):
    path = layout / "5th ABAW Annotations" / "VA_Estimation_Challenge" / "Train_Set" / "vidA.txt"
    values = tracks.read_track_file(str(path), "va")
    assert values.shape == (6, 2)
    np.testing.assert_array_equal(values[:3], np.float32([[0.5, -0.25], [0.125, 0.75], [0.1, 0.2]]))
    np.testing.assert_array_equal(values[3], [-5, -5])  # -5 in either value: the frame is not annotated
    expr = tracks.read_track_file(str(layout / "5th ABAW Annotations" / "EXPR_Classification_Challenge" /
                                      "Train_Set" / "vid_B_left.txt"), "expr")
    np.testing.assert_array_equal(expr[:, 0], [0, 5])


@pytest.mark.parametrize("task, lines, line, reason", [
    ("va", [VA_HEADER, "0.5,0.5", "0.5"], 3, "1 fields instead of 2"),
    ("va", [VA_HEADER, "0.5,1.5"], 2, "arousal 1.5 is outside [-1, 1]"),
    ("va", [VA_HEADER, "0.5,abc"], 2, "'abc' is not a number"),
    ("va", [VA_HEADER, "0.5,0.5", "", "0.1,0.1"], 3, "blank line"),
    ("expr", [EXPR_HEADER, "3", "8"], 3, "expression 8 is not an integer in 0..7"),
    ("expr", [EXPR_HEADER, "2.5"], 2, "not an integer"),
    ("au", [AU_HEADER, "1,0,0,1,0,0,1,0,0,0,1,2"], 2, "AU26 is 2"),
    ("au", [VA_HEADER, "0.1,0.1"], 1, "is not 'AU1,AU2"),
])
def test_malformed_lines_name_file_line_and_reason(tmp_path, task, lines, line, reason):
    path = tmp_path / "video.txt"
    write_text(path, lines)
    with pytest.raises(UserError) as error:
        tracks.read_track_file(str(path), task)
    assert f"{path}, line {line}: " in str(error.value) and reason in str(error.value)


def test_tracks_join_per_frame_and_leave_out_frames_without_image(layout):
    dirs = tracks.find_challenge_dirs([str(layout)], ("va", "expr", "au"))
    assert os.path.basename(dirs["expr"]) == "EXPR_Classification_Challenge"
    logged = []
    split = tracks.load_split(dirs, str(layout / "cropped_aligned"), "train", log=logged.append)
    rows = dict(zip(split.images, split.targets))
    assert list(split.images) == ["vidA/00001.jpg", "vidA/00002.jpg", "vidA/00004.jpg", "vid_B_left/00001.jpg",
                                  "vid_B_left/00002.jpg"]
    au_row = [float(x) for x in AU_ROW.split(",")]
    # vidA frame 1: in all three files
    np.testing.assert_array_equal(rows["vidA/00001.jpg"], [0.5, -0.25, 4, *au_row])
    # vidA frame 2: expression -1 and AU -1 in their files
    np.testing.assert_array_equal(rows["vidA/00002.jpg"], [0.125, 0.75, -1, *[-1] * 12])
    # vid_B frame 2: in the VA and EXPR files, absent from the AU track
    np.testing.assert_array_equal(rows["vid_B_left/00002.jpg"], [0.25, 0.5, 5, *[-1] * 12])
    # lines of frames 3, 5 and 6 of vidA have no image: left out, with one summary line
    assert len(logged) == 1 and "3 listed frames have no image" in logged[0] and "vidA/00003.jpg" in logged[0]


def test_both_expr_folder_names_and_ambiguous_folders(layout):
    root = layout / "5th ABAW Annotations"
    os.rename(root / "EXPR_Classification_Challenge", root / "EXPR_Recognition_Challenge")
    dirs = tracks.find_challenge_dirs([str(layout)], ("expr",))
    assert dirs["expr"].endswith("EXPR_Recognition_Challenge")
    (layout / "6th ABAW Annotations" / "EXPR_Classification_Challenge").mkdir(parents=True)
    with pytest.raises(UserError, match="several EXPR_Classification_Challenge or EXPR_Recognition_Challenge"):
        tracks.find_challenge_dirs([str(layout)], ("expr",))
    with pytest.raises(UserError, match="no AU_Detection_Challenge folder"):
        tracks.find_challenge_dirs([str(layout / "6th ABAW Annotations")], ("au",))


def test_test_lists_in_both_forms_and_nearest_frame_filling(layout):
    image_root = str(layout / "cropped_aligned")
    sample = layout / "CVPR_6th_ABAW_VA_test_set_sample.txt"
    write_text(sample, ["image_location,valence,arousal", "vidA/00001.jpg,", "vidA/00002.jpg,", "vidA/00003.jpg,",
                        "vidA/00005.jpg,", "vid_B_left/00001.jpg,"])
    names = layout / "au_videos.txt"
    write_text(names, ["vid_B_left", "vidA"])
    with pytest.raises(UserError, match="list of video names; say which task"):
        tracks.read_test_list(str(names), image_root, ("va", "au"))
    va = tracks.read_test_list(str(sample), image_root, ("va", "au"))
    au = tracks.read_test_list(f"au={names}", image_root, ("va", "au"))
    assert va.task == "va" and au.task == "au"
    # every frame 1..N of each video, N its last frame with an image (vidA: 4, though frame 3 has none)
    assert list(au.images) == ["vid_B_left/00001.jpg", "vid_B_left/00002.jpg", "vidA/00001.jpg", "vidA/00002.jpg",
                               "vidA/00003.jpg", "vidA/00004.jpg"]
    assert tracks.find_test_lists([str(layout)], ("va", "au")) == [str(sample)]

    frames = tracks.test_frames([va, au], image_root)
    assert frames.filled == {"va": 2, "au": 1}
    predicted = list(frames.images)
    source = {task: [predicted[row] for row in frames.rows[task]] for task in frames.rows}
    # frame 3 is equally far from 2 and 4: the lower one; frame 5 takes 4; nothing comes from another video
    assert source["va"] == ["vidA/00001.jpg", "vidA/00002.jpg", "vidA/00002.jpg", "vidA/00004.jpg",
                            "vid_B_left/00001.jpg"]
    assert source["au"] == ["vid_B_left/00001.jpg", "vid_B_left/00002.jpg", "vidA/00001.jpg", "vidA/00002.jpg",
                            "vidA/00002.jpg", "vidA/00004.jpg"]
    assert len(predicted) == len(set(predicted)) == 5

    write_text(sample, ["image_location,valence,arousal", "vidC/00001.jpg,"])
    with pytest.raises(UserError, match="its video has no frame"):
        tracks.test_frames([tracks.read_test_list(str(sample), image_root, ("va",))], image_root)


def test_submission_files_of_each_task_reread_independently(tmp_path):
    images = ["vidA/00001.jpg", "vidA/00002.jpg", "vid_B_left/00001.jpg"]
    va = np.array([[0.1234567, -2.0], [1.0, 0.0], [-0.5, 0.25]])
    expr = np.array([4, 0, 7])
    aus = np.array([[1, 0] * 6, [0, 1] * 6, [1] * 12])
    for task, values in (("va", va), ("expr", expr), ("au", aus)):
        path = tmp_path / f"test_predictions_{task}.txt"
        single.TRACKS[task].write_submission(str(path), images, values)
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
        header = {"va": ["image_location", "valence", "arousal"], "expr": ["image_location", *EXPR_NAMES],
                  "au": ["image_location", *AU_NAMES]}[task]
        assert rows[0] == header
        assert [row[0] for row in rows[1:]] == images
        if task == "va":
            np.testing.assert_allclose([[float(x) for x in row[1:]] for row in rows[1:]], np.clip(va, -1, 1),
                                       atol=5e-7)
        elif task == "expr":
            assert [int(row[1]) for row in rows[1:]] == list(expr)
        else:
            np.testing.assert_array_equal([[int(x) for x in row[1:]] for row in rows[1:]], aus)
        with pytest.raises(RuntimeError):
            single.TRACKS[task].check_file(str(path), images[:2])
