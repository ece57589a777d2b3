"""The data layer reads the released files exactly, and rejects bad rows with file, line and reason."""

import os

import cv2
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from datasets import lsd, mtl
from datasets.images import ImageDecodeError, ImageListDataset, collate_uint8, decode_image
from datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    _adjust_hue,
    _crop_params,
    _jitter_params,
    color_jitter,
    eval_transform,
    lsd_train_transform,
    mtl_train_transform,
    random_crop,
)
from utils.errors import UserError

HEADER = "image,valence,arousal,expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def write_jpeg(path, value=128, size=16):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((size, size, 3), value, dtype=np.uint8)
    image[: size // 2, :, 0] = 255 - value  # not uniform, so that flips and crops are visible
    assert cv2.imwrite(str(path), image)


def write_text(path, lines, newline="\n"):
    with open(path, "w", newline="") as handle:
        handle.write(newline.join(lines) + newline)


@pytest.fixture
def mtl_dir(tmp_path):
    rows = [
        "video45_1/00001.jpg,0.5,-0.25,4,1,0,0,1,0,0,1,0,0,0,1,0",
        "video45_1/00002.jpg,-5,-5,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1,-1  ",
        "10-60-1280x720_right/00007.jpg , 1 , -1 , 7 , 0,0,0,0,0,0,0,0,0,0,0,0",
        "135-24-1920x1080/00003.jpg,-0.125,0.75,-1,0,1,-1,0,1,0,-1,1,0,1,0,1",
        "135-24-1920x1080/00004.jpg,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",  # image absent on disk
    ]
    write_text(tmp_path / mtl.TRAIN_FILE, [HEADER] + rows, newline="\r\n")
    for image in ["video45_1/00001.jpg", "video45_1/00002.jpg", "10-60-1280x720_right/00007.jpg",
                  "135-24-1920x1080/00003.jpg"]:
        write_jpeg(tmp_path / mtl.IMAGE_DIR / image)
    return tmp_path


def test_annotations_parse_missing_codes_crlf_and_trailing_spaces(mtl_dir):
    annotations = mtl.read_annotations(str(mtl_dir / mtl.TRAIN_FILE))
    assert len(annotations) == 5
    assert annotations.images[2] == "10-60-1280x720_right/00007.jpg"
    np.testing.assert_array_equal(annotations.lines, [2, 3, 4, 5, 6])
    np.testing.assert_allclose(annotations.targets[0], [0.5, -0.25, 4, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    np.testing.assert_allclose(annotations.targets[1], [-5, -5] + [-1] * 13)
    np.testing.assert_allclose(annotations.targets[3], [-0.125, 0.75, -1, 0, 1, -1, 0, 1, 0, -1, 1, 0, 1, 0, 1])
    assert annotations.targets.dtype == np.float32 and annotations.targets.shape == (5, 15)


def test_absent_images_are_left_out_with_one_summary_line(mtl_dir):
    messages = []
    annotations = mtl.load_split(str(mtl_dir), mtl.TRAIN_FILE, log=messages.append)
    assert len(annotations) == 4
    assert "135-24-1920x1080/00004.jpg" not in set(annotations.images)
    assert len(messages) == 1
    assert "1 listed frames have no image" in messages[0] and "135-24-1920x1080/00004.jpg" in messages[0]


def test_dataset_returns_uint8_image_target_and_index(mtl_dir):
    annotations = mtl.load_split(str(mtl_dir), mtl.TRAIN_FILE, log=lambda _: None)
    dataset = mtl.MTLDataset(str(mtl_dir / mtl.IMAGE_DIR), annotations)
    image, target, index = dataset[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 16, 16)
    assert index == 3
    np.testing.assert_allclose(target.numpy(), annotations.targets[3])
    images, targets, indices, dropped = collate_uint8([dataset[i] for i in range(4)])
    assert images.shape == (4, 3, 16, 16) and targets.shape == (4, 15) and indices.tolist() == [0, 1, 2, 3]
    assert dropped == []


@pytest.mark.parametrize("row, line, reason", [
    ("a/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0", 3, "15 fields instead of 16"),
    ("a/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0,1,1", 3, "18 fields instead of 16"),
    ("a/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0,1", 3, "more than 16 fields"),
    ("a/00001.jpg,0.1,abc,3,0,0,0,0,0,0,0,0,0,0,0,0", 3, "arousal"),
    ("a/00001.jpg,1.5,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0", 3, "outside [-1, 1]"),
    ("a/00001.jpg,0.1,-4,3,0,0,0,0,0,0,0,0,0,0,0,0", 3, "outside [-1, 1]"),
    ("a/00001.jpg,0.1,0.2,8,0,0,0,0,0,0,0,0,0,0,0,0", 3, "expression '8'"),
    ("a/00001.jpg,0.1,0.2,2.5,0,0,0,0,0,0,0,0,0,0,0,0", 3, "expression '2.5'"),
    ("a/00001.jpg,0.1,0.2,3,0,0,0,0,2,0,0,0,0,0,0,0", 3, "AU7 is '2'"),
    ("a/00001.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,nan", 3, "AU26"),
    (",0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0", 3, "field 1 (image) is empty"),
    ("a/00001.jpg,0.1,,3,0,0,0,0,0,0,0,0,0,0,0,0", 3, "field 3 (arousal) is empty"),
])
def test_each_kind_of_bad_row_names_file_line_and_reason(tmp_path, row, line, reason):
    good = "a/00000.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0"
    path = tmp_path / "ann.txt"
    write_text(path, [HEADER, good, row, good], newline="\r\n")
    with pytest.raises(UserError) as error:
        mtl.read_annotations(str(path))
    message = str(error.value)
    assert str(path) in message and f"line {line}" in message and reason in message


def test_blank_lines_and_trailing_comma_are_accepted(tmp_path):
    path = tmp_path / "ann.txt"
    write_text(path, [HEADER, "a/1.jpg,0.1,0.2,3,0,0,0,0,0,0,0,0,0,0,0,0,", "", "a/2.jpg,-5,-5,-1" + ",-1" * 12, ""])
    annotations = mtl.read_annotations(str(path))
    assert list(annotations.images) == ["a/1.jpg", "a/2.jpg"]
    assert list(annotations.lines) == [2, 4]


def test_test_list_accepts_bare_paths_and_empty_fields(tmp_path):
    path = tmp_path / mtl.TEST_LIST_FILE
    write_text(path, ["image,valence,arousal,expression,aus", "v 1/00001.jpg", "v-2_left/00010.jpg,,,,", "x/3.jpg  "],
               newline="\r\n")
    assert list(mtl.read_test_list(str(path))) == ["v 1/00001.jpg", "v-2_left/00010.jpg", "x/3.jpg"]


def test_nearest_frame_stands_in_for_a_missing_one(tmp_path):
    for frame in ("00001", "00005", "00009"):
        write_jpeg(tmp_path / "vid" / f"{frame}.jpg")
    images = np.array(["vid/00001.jpg", "vid/00004.jpg", "vid/00008.jpg"], dtype=object)
    present = mtl.list_available(str(tmp_path), images)
    assert present.tolist() == [True, False, False]
    assert mtl.nearest_frames(str(tmp_path), images, ~present) == {"vid/00004.jpg": "vid/00005.jpg",
                                                                  "vid/00008.jpg": "vid/00009.jpg"}


def test_lsd_class_folders_map_case_insensitively_with_anger_aliases(tmp_path):
    folders = {"ANGRER": 2, "disgust": 1, "Fear": 1, "HAPPINESS": 3, "SADNESS": 1, "SURPRISE": 1}
    for folder, count in folders.items():
        for i in range(count):
            write_jpeg(tmp_path / "train" / folder / f"{i}.jpg")
    split = lsd.ClassFolders(str(tmp_path / "train"))
    assert split.class_counts().tolist() == [2, 1, 1, 3, 1, 1]
    assert lsd.class_index("angere") == 0 and lsd.class_index("ANGER") == 0 and lsd.class_index("surprise") == 5
    dataset = lsd.LSDDataset(split)
    labels = [int(dataset[i][1]) for i in range(len(dataset))]
    assert labels == [lsd.class_index(image.split("/")[0]) for image in split.images]


def test_lsd_unknown_class_folder_is_an_error(tmp_path):
    write_jpeg(tmp_path / "val" / "NEUTRAL" / "0.jpg")
    with pytest.raises(UserError, match="unknown LSD class folder 'NEUTRAL'"):
        lsd.ClassFolders(str(tmp_path / "val"))


def test_lsd_empty_split_is_an_error(tmp_path):
    (tmp_path / "val" / "ANGER").mkdir(parents=True)
    with pytest.raises(UserError, match="holds no image"):
        lsd.ClassFolders(str(tmp_path / "val"))
    with pytest.raises(UserError, match="not found"):
        lsd.ClassFolders(str(tmp_path / "absent"))


def test_undecodable_images_raise_naming_the_file_and_are_dropped_in_training(tmp_path):
    good = tmp_path / "good.jpg"
    write_jpeg(good)
    data = good.read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_bytes(b"this is not an image")
    for name in ("empty.jpg", "truncated.jpg", "text.jpg"):
        with pytest.raises(ImageDecodeError, match=name):
            decode_image(str(tmp_path / name))
    dataset = ImageListDataset(str(tmp_path), ["good.jpg", "text.jpg"])
    with pytest.raises(ImageDecodeError, match="text.jpg"):
        dataset[1]
    images, indices, dropped = collate_uint8([(decode_image(str(good)), 0), (None, 1), (None, 2)])
    assert images.shape[0] == 1 and indices.tolist() == [0] and dropped == [1, 2]


def test_eval_transform_matches_torchvision_resize_and_normalise():
    batch = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)
    ours = eval_transform(56)(batch)
    expected = TF.normalize(TF.resize(batch.float() / 255, [56, 56], antialias=True), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_train_transforms_output_normalised_crops_drawn_per_sample():
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).repeat(64, 1, 1, 1)
    out = mtl_train_transform(28)(batch)
    assert out.shape == (64, 3, 28, 28) and out.dtype == torch.float32
    distinct = {tuple(out[i].flatten()[:50].tolist()) for i in range(64)}
    assert len(distinct) > 10  # one crop/flip/jitter for the whole batch would give 1 distinct sample
    assert lsd_train_transform(28)(batch).shape == (64, 3, 28, 28)


def test_random_crop_takes_each_sample_from_its_own_window():
    torch.manual_seed(1)
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(16, 3, 10, 10)
    crops = random_crop(ramp, 4)
    starts = crops[:, 0, 0, 0]
    torch.testing.assert_close(crops[:, 0, 0], starts[:, None] + torch.arange(4.0))
    assert len(set(starts.tolist())) > 1


def test_color_jitter_hue_matches_torchvision_and_probability_zero_is_identity():
    images = torch.rand(4, 3, 12, 12)
    shifts = torch.tensor([0.1, -0.05, 0.3, 0.0])
    expected = torch.stack([TF.adjust_hue(images[i], float(shifts[i])) for i in range(4)])
    torch.testing.assert_close(_adjust_hue(images, shifts), expected, atol=1e-5, rtol=0)
    assert torch.equal(color_jitter(images, 0.4, 0.4, 0.4, 0.1, p=0.0), images)
    changed = color_jitter(images, 0.4, 0.4, 0.4, 0.1, p=1.0)
    assert changed.shape == images.shape and not torch.equal(changed, images)
    assert changed.min() >= 0 and changed.max() <= 1


def test_train_transform_is_torchvisions_per_image_pipeline_with_per_sample_parameters():
    # resize (uint8, rounded as PIL) -> ColorJitter in each sample's own order -> crop -> flip -> normalise
    images = torch.randint(0, 256, (24, 3, 20, 20), dtype=torch.uint8)
    torch.manual_seed(11)
    out = mtl_train_transform(16)(images)
    torch.manual_seed(11)  # replay the draws: jitter coin per sample, jitter factors and order, crop and flip
    chosen = torch.nonzero(torch.rand(24) < 0.2).flatten().tolist()
    factors, order = _jitter_params(len(chosen), 0.4, 0.4, 0.4, 0.1)
    crops = _crop_params(24, 17, 17, 16, 0.5)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    for i in range(24):
        expected = TF.resize(images[i], [17, 17], antialias=True).float() / 255
        if i in chosen:
            row = chosen.index(i)
            for op in order[row]:
                expected = ops[op](expected, factors[row][op])
        top, left, flip = crops[i]
        expected = expected[:, top:top + 16, left:left + 16]
        expected = TF.normalize(expected.flip(-1) if flip else expected, IMAGENET_MEAN, IMAGENET_STD)
        # torchvision's grey uses 0.2989 where PIL (the reference) uses 0.299
        torch.testing.assert_close(out[i], expected, atol=1e-3, rtol=0)
    assert 0 < len(chosen) < 24 and len({flip for _, _, flip in crops}) == 2
