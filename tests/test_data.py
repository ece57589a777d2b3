"""The data layer reads the released files exactly, and rejects bad rows with file, line and reason."""

import os

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF_PIL
from torchvision.transforms.v2 import functional as TF

from datasets import lsd, mtl
from datasets.images import ImageDecodeError, ImageListDataset, collate_uint8, decode_image
from datasets.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentedDataset,
    BatchTransform,
    EpochKeys,
    _jitter_uint8,
    lsd_train_augment,
    mtl_train_augment,
    sample_rng,
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
    ours = BatchTransform(56)(batch)
    expected = TF.normalize(TF.resize(batch.float() / 255, [56, 56], antialias=True), IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_batches_of_the_model_size_are_only_normalised_into_channels_last_floats():
    batch = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    ours = BatchTransform(24)(batch)
    expected = TF.normalize(batch.float() / 255, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    assert ours.is_contiguous(memory_format=torch.channels_last)
    assert BatchTransform(24, channels_last=False)(batch).is_contiguous()
    with pytest.raises(TypeError):
        BatchTransform(24)(batch.float())


def pil_op(op: int, image: np.ndarray, factor: float) -> np.ndarray:
    """The reference's jitter op: torchvision's functional on a PIL image (its PIL path)."""
    ops = [TF_PIL.adjust_brightness, TF_PIL.adjust_contrast, TF_PIL.adjust_saturation, TF_PIL.adjust_hue]
    return np.asarray(ops[op](Image.fromarray(image), factor))


def test_uint8_jitter_ops_match_pils_which_the_reference_used():
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for op, factor in [(0, 1.3), (0, 0.7), (1, 1.35), (1, 0.65), (2, 1.4), (2, 0.6)]:
        factors = [1.0, 1.0, 1.0, 0.0]
        factors[op] = factor
        ours = _jitter_uint8(image, factors, (op,)).astype(int)
        difference = np.abs(ours - pil_op(op, image, factor).astype(int))
        # brightness and contrast bit-exact; saturation's grey image may round one level apart
        assert difference.max() <= (0 if op < 2 else 1), (op, factor)
        assert not np.array_equal(ours, image)


def test_uint8_hue_rotation_is_as_close_to_the_exact_rotation_as_pils():
    # Both rotate in uint8 HSV (PIL: 255 hue steps per turn, here 256), so both are a few levels off the exact
    # rotation on saturated pixels: one hue step at full chroma moves a channel by 6 levels, and the shift and the
    # conversion each may be a step off. Ours must stay within the bound that the reference's PIL path also meets.
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for shift in (0.08, -0.09, 0.03, -0.1):
        exact = TF.adjust_hue(torch.from_numpy(image).permute(2, 0, 1).float() / 255, shift)
        exact = (exact * 255).permute(1, 2, 0).numpy()
        ours = np.abs(_jitter_uint8(image, [1.0, 1.0, 1.0, shift], (3,)) - exact)
        pil = np.abs(pil_op(3, image, shift) - exact)
        assert ours.mean() < 1.5 and ours.max() < 13, shift
        assert pil.mean() < 1.5 and pil.max() < 13, shift
    grey = np.full((8, 8, 3), 77, dtype=np.uint8)
    assert np.array_equal(_jitter_uint8(grey, [1.0, 1.0, 1.0, 0.3], (3,)), grey)


def test_train_augment_is_the_references_per_image_pipeline_with_each_samples_parameters():
    # resize (uint8, rounded as PIL) -> ColorJitter in the sample's own order -> crop -> flip, per sample
    augment = mtl_train_augment(16)
    images = [torch.randint(0, 256, (20, 20, 3), dtype=torch.uint8).permute(2, 0, 1) for _ in range(40)]
    params = [augment.params(sample_rng(3, 0, i)) for i in range(40)]
    out = augment.batch(list(zip(images, params)))
    assert out.shape == (40, 3, 16, 16) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    for i, (image, p) in enumerate(zip(images, params)):
        expected = TF.resize(image, [17, 17], antialias=True).permute(1, 2, 0).numpy()
        if p.jitter is not None:
            factors, order = p.jitter
            for op in order:
                expected = pil_op(op, expected, factors[op])
        expected = torch.from_numpy(np.array(expected)).permute(2, 0, 1)
        expected = expected[:, p.top:p.top + 16, p.left:p.left + 16]
        expected = expected.flip(-1) if p.flip else expected
        difference = (out[i].int() - expected.int()).abs()
        if p.jitter is None:
            assert torch.equal(out[i], expected), i
        else:  # uint8 HSV rounding (hue) and one level of saturation rounding may carry through later ops
            assert difference.float().mean() < 2 and difference.max() <= 16, i
    assert 0 < sum(p.jitter is not None for p in params) < 40 and len({p.flip for p in params}) == 2
    assert len({(p.top, p.left) for p in params}) > 1
    assert lsd_train_augment(16).resize_to == 16 and lsd_train_augment(224).resize_to == 228


def test_each_samples_parameters_come_from_seed_epoch_and_index_only():
    augment = mtl_train_augment(16)
    draw = lambda seed, epoch, index: augment.params(sample_rng(seed, epoch, index))  # noqa: E731
    assert draw(0, 1, 5) == draw(0, 1, 5)
    assert len({draw(0, epoch, 5) for epoch in range(8)}) > 1 and len({draw(1, 1, index) for index in range(8)}) > 1
    # the jitter probability and the flip coin come out at their rates
    drawn = [draw(0, 0, index) for index in range(2000)]
    assert abs(np.mean([p.jitter is not None for p in drawn]) - 0.2) < 0.03
    assert abs(np.mean([p.flip for p in drawn]) - 0.5) < 0.04


def test_training_batches_do_not_depend_on_workers_or_on_a_mid_epoch_resume(tmp_path):
    root = tmp_path / "frames"
    rows = []
    for i in range(12):
        write_jpeg(root / "v" / f"{i:05d}.jpg", value=10 + 20 * i, size=20)
        rows.append(f"v/{i:05d}.jpg,0.1,0.2,{i % 8},0,1,0,0,0,0,0,0,0,0,1,0")
    write_text(tmp_path / "train.txt", [HEADER] + rows)
    dataset = mtl.MTLDataset(str(root), mtl.read_annotations(str(tmp_path / "train.txt")))
    augment = mtl_train_augment(16)

    def batches(workers: int, epoch: int, skip: int = 0):
        sampler = EpochKeys(torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(epoch)),
                            skip=skip)
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(AugmentedDataset(dataset, augment, seed=7), batch_size=4,
                                             sampler=sampler, num_workers=workers, collate_fn=augment.collate)
        return [(images, indices) for images, _, indices, _ in loader]

    single, parallel, resumed = batches(0, 1), batches(2, 1), batches(0, 1, skip=4)
    assert len(single) == 3
    for (a, ia), (b, ib) in zip(single, parallel):
        assert torch.equal(ia, ib) and torch.equal(a, b)
    for (a, ia), (b, ib) in zip(single[1:], resumed):
        assert torch.equal(ia, ib) and torch.equal(a, b)
    # another epoch draws other parameters for the same frames
    by_index = {int(i): image for images, indices in single for i, image in zip(indices, images)}
    other = {int(i): image for images, indices in batches(0, 2) for i, image in zip(indices, images)}
    assert any(not torch.equal(by_index[i], other[i]) for i in by_index)
