"""datasets.media: decoding (frame numbers, times at constant and variable rates, rotation, sound at 16 kHz), the
prepared layout's readers and writers, detection, tracking and alignment, on tiny videos written here with PyAV."""

import fractions

import cv2
import numpy as np
import pytest

from datasets.media import prepared
from datasets.media.faces import ARCFACE_TEMPLATE, Face, MTCNNDetector, Tracker, align, similarity_transform, template
from datasets.media.video import MediaError, find_videos, first_frame_time, probe, read_audio, read_frames


def write_test_video(path, images, times=None, fps=10, rotation=0, audio=None, audio_rate=16000, audio_layout="mono",
                     video_codec="libx264", audio_codec="aac", video_stream=True):
    """A video of upright RGB ``images`` shown at ``times`` (s; default k / fps), the pixels stored turned against a
    display ``rotation`` (degrees counter-clockwise); ``audio`` (float samples, (n,) or (channels, n)) at
    ``audio_rate``. No images and ``video_stream``: a 64 x 48 video stream without a frame."""
    import av

    millisecond = fractions.Fraction(1, 1000)
    times = [k / fps for k in range(len(images))] if times is None else times
    container = av.open(str(path), "w")
    audio_stream = None
    if audio is not None:
        audio_stream = container.add_stream(audio_codec, rate=audio_rate, layout=audio_layout)
    video = None
    if not len(images) and video_stream:
        video = container.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        container.start_encoding()  # the header, without any frame
    for image, stamp in zip(images, times):
        stored = np.ascontiguousarray(np.rot90(image, k=-(rotation // 90))) if rotation else image
        if video is None:
            video = container.add_stream(video_codec, rate=fps)
            video.width, video.height = stored.shape[1], stored.shape[0]
            video.pix_fmt = "yuvj420p" if video_codec == "mjpeg" else "yuv420p"
            video.codec_context.time_base = millisecond
            if rotation:
                video.set_display_rotation(rotation)
        frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
        frame.pts, frame.time_base = int(round(stamp * 1000)), millisecond
        for packet in video.encode(frame):
            container.mux(packet)
    if video is not None:
        for packet in video.encode():
            container.mux(packet)
    if audio_stream is not None:
        samples = np.atleast_2d(np.asarray(audio, np.float32))
        planar = "fltp" if audio_codec == "aac" else "s16p"
        step = 1024
        for start in range(0, samples.shape[1], step):
            chunk = samples[:, start:start + step]
            if planar == "s16p":
                chunk = np.round(chunk * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=planar, layout=audio_layout)
            frame.sample_rate, frame.pts, frame.time_base = audio_rate, start, fractions.Fraction(1, audio_rate)
            for packet in audio_stream.encode(frame):
                container.mux(packet)
        for packet in audio_stream.encode():
            container.mux(packet)
    container.close()
    return str(path)


def plain_frames(count, width=64, height=48):
    return [np.full((height, width, 3), 40 + 20 * k, np.uint8) for k in range(count)]


def face_tile(identity: int, tile: int = 96) -> np.ndarray:
    """An upright RGB synthetic face (``datasets.synthetic.render``) filling a ``tile`` x ``tile`` square."""
    from datasets.synthetic.render import render_face, sample_identity, sample_look

    rng = np.random.default_rng(identity)
    face = sample_identity(rng, "video")
    look = sample_look(rng, "video")
    return render_face(face, np.zeros(15), (0.0, 1.0, 0.0, 0.0), look, tile, rng)[:, :, ::-1].copy()


def test_frames_are_numbered_from_one_with_times_at_a_constant_rate(tmp_path):
    path = write_test_video(tmp_path / "cfr.mp4", plain_frames(6), fps=10)
    frames = list(read_frames(path))
    assert [f.index for f in frames] == [1, 2, 3, 4, 5, 6]
    assert np.allclose([f.time for f in frames], [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], atol=1e-6)
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    # the k-th frame is the k-th image written (grey levels 40, 60, ...)
    assert [int(round(f.image.mean())) for f in frames] == pytest.approx([40, 60, 80, 100, 120, 140], abs=3)
    info = probe(path)
    assert (info.fps, info.width, info.height, info.rotation, info.has_audio) == (10.0, 64, 48, 0, False)


def test_times_come_from_the_frames_own_timestamps_at_a_variable_rate(tmp_path):
    stamps = [0.0, 0.07, 0.11, 0.25, 0.26, 0.4]
    path = write_test_video(tmp_path / "vfr.mp4", plain_frames(6), times=stamps, fps=15)
    assert [f.time for f in read_frames(path, rgb=False)] == pytest.approx(stamps, abs=1e-6)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_the_display_rotation_is_applied_so_frames_are_upright(tmp_path, rotation):
    upright = np.full((48, 64, 3), 30, np.uint8)
    upright[:16, :16] = (250, 30, 30)  # a red block in the top-left corner of the upright picture
    path = write_test_video(tmp_path / f"rot{rotation}.mp4", [upright] * 2, rotation=rotation)
    info = probe(path)
    assert (info.rotation, info.width, info.height) == (rotation, 64, 48)
    image = next(read_frames(path)).image
    assert image.shape == (48, 64, 3)
    assert image[4:12, 4:12, 0].mean() > 200 and image[-12:-4, -12:-4, 0].mean() < 80


def test_sound_is_resampled_to_16k_mono_with_the_duration_of_the_source(tmp_path):
    rate, seconds = 44100, 1.0
    t = np.arange(int(rate * seconds)) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 440 * t)])
    path = write_test_video(tmp_path / "pcm.mkv", plain_frames(10), fps=10, audio=stereo, audio_rate=rate,
                            audio_layout="stereo", audio_codec="pcm_s16le")
    samples = np.concatenate(list(read_audio(path, first_frame_time(path))))
    assert abs(len(samples) - 16000) <= 2  # 1 s of sound, at 16 kHz
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 3
    assert 0.3 < np.abs(samples).max() < 0.6
    target = tmp_path / "out.wav"
    prepared.write_wav(str(target), samples)
    back, back_rate = prepared.read_wav(str(target))
    assert back_rate == 16000 and len(back) == len(samples)
    assert np.abs(back - samples).max() < 1e-4


def test_a_video_without_sound_yields_no_samples(tmp_path):
    path = write_test_video(tmp_path / "silent.mp4", plain_frames(3))
    assert list(read_audio(path, 0.0)) == []


def test_unreadable_files_raise_a_one_line_media_error(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    for path in (empty, noise):
        with pytest.raises(MediaError) as error:
            list(read_frames(str(path)))
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(MediaError, match="without any video"):
        find_videos([str(tmp_path / "nothing")])


def test_find_videos_searches_folders_at_any_depth(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/b/x.mp4", "a/y.MOV", "a/notes.txt"):
        (tmp_path / name).write_bytes(b"0")
    assert find_videos([str(tmp_path)]) == [str(tmp_path / "a" / "y.MOV"), str(tmp_path / "a" / "b" / "x.mp4")]


# ---------------------------------------------------------------------------------------------------------------------
# The prepared layout


def test_frame_times_and_videos_json_round_trip(tmp_path):
    root = str(tmp_path)
    assert prepared.read_videos(root) == {}
    prepared.write_frame_times(prepared.times_path(root, "v"), [0.0, 0.0333333, 0.07])
    assert (tmp_path / "times" / "v.txt").read_text() == "0.000000\n0.033333\n0.070000\n"
    assert prepared.read_frame_times(root, "v").tolist() == [0.0, 0.033333, 0.07]
    videos = {"v": {"fps": 30.0, "frames": 3, "tracks": {"v_left": 3, "v_right": 2}}}
    prepared.write_videos(root, videos)
    assert prepared.read_videos(root) == videos


def test_source_video_maps_crop_folders_to_their_video():
    videos = {"a": {"tracks": {"a_left": 1, "a_right": 1}}, "video10": {"tracks": {}},
              "video10_1": {"tracks": {}}, "b": {"tracks": {"b_1": 2, "b_2": 2, "b_3": 1}}}
    assert prepared.source_video("a_left", videos) == "a"
    assert prepared.source_video("b_3", videos) == "b"
    assert prepared.source_video("video10_1", videos) == "video10_1"  # a video of its own, not video10's track
    assert prepared.source_video("video10_right", videos) == "video10"  # Aff-Wild2's own crops, no track list
    assert prepared.source_video("elsewhere_left", videos) == "elsewhere_left"


def test_track_folders_follow_aff_wild2_naming():
    assert prepared.track_folders("v", 1) == ["v"]
    assert prepared.track_folders("v", 2) == ["v_left", "v_right"]
    assert prepared.track_folders("v", 3) == ["v_1", "v_2", "v_3"]


# ---------------------------------------------------------------------------------------------------------------------
# Alignment, tracking, detection


def test_similarity_transform_recovers_a_known_one():
    angle, scale, shift = np.deg2rad(25), 1.7, np.array([13.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = np.random.default_rng(0).uniform(0, 100, (5, 2))
    matrix = similarity_transform(source, source @ rotation.T + shift)
    assert np.allclose(matrix[:, :2], rotation) and np.allclose(matrix[:, 2], shift)


@pytest.mark.parametrize("crop_size", [112, 224])
def test_alignment_puts_the_landmarks_on_the_template(crop_size):
    # five dots where a face turned by 30 degrees and scaled by 2.3 would have its landmarks
    angle, scale = np.deg2rad(30), 2.3
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = ARCFACE_TEMPLATE @ rotation.T + np.array([140.0, 60.0])
    image = np.zeros((480, 480, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 5 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    crop = align(image, landmarks, crop_size)
    assert crop.shape == (crop_size, crop_size, 3)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats((crop[:, :, 0] > 127).astype(np.uint8))
    found = centroids[1:]
    assert count - 1 == 5
    expected = template(crop_size)
    distances = np.linalg.norm(found[:, None] - expected[None], axis=2).min(axis=0)
    assert distances.max() < 0.6 * crop_size / 112  # each template point has a dot on it, to a fraction of a pixel


def _face(x, y, size=40.0):
    box = np.array([x, y, x + size, y + size], np.float64)
    return Face(box, 0.99, np.zeros((5, 2)))


def test_tracks_survive_a_short_gap_and_two_people_are_ordered_left_to_right():
    tracker = Tracker(max_gap=3, min_length=3)
    ids = []
    for frame in range(1, 13):
        faces = [_face(200 + frame, 50)]  # the person on the right, seen throughout
        if not 5 <= frame <= 7:  # the person on the left is missed for three frames
            faces.append(_face(20 + 2 * frame, 55))
        ids.append([f.track for f in tracker.update(frame, faces)])
    person, order, dropped = tracker.finish()
    right = ids[0][0]
    left = ids[0][1]
    assert all(frame_ids[0] == right for frame_ids in ids)
    assert all(left in frame_ids for k, frame_ids in enumerate(ids, 1) if not 5 <= k <= 7)
    assert order == [left, right] and dropped == 0


def test_a_long_absence_near_the_same_place_stays_one_person_and_short_tracks_are_dropped():
    tracker = Tracker(max_gap=2, min_length=4, join_gap=20)
    for frame in range(1, 21):
        faces = []
        if not 6 <= frame <= 12:  # gone for 7 frames (over max_gap): a new track, joined at the end
            faces.append(_face(100, 40))
        if frame in (3, 4):  # a two-frame false detection far away
            faces.append(_face(10, 10, 20))
        tracker.update(frame, faces)
    person, order, dropped = tracker.finish()
    assert len(order) == 1 and dropped == 1
    assert len(person) == 2 and set(person.values()) == set(order)  # two tracks, one person


def test_three_people_are_ordered_by_first_appearance():
    tracker = Tracker(min_length=2)
    for frame in range(1, 7):
        faces = [_face(300, 10), _face(10, 10)] + ([_face(150, 10)] if frame >= 2 else [])
        tracker.update(frame, faces)
    person, order, dropped = tracker.finish()
    assert len(order) == 3 and dropped == 0
    first_seen = sorted(tracker.ended, key=lambda t: t.first)
    assert [t.ident for t in first_seen] == order


@pytest.mark.slow
def test_mtcnn_finds_a_synthetic_face_and_its_landmarks():
    frame = np.full((120, 160, 3), 90, np.uint8)
    frame[12:108, 40:136] = face_tile(3, 96)
    detector = MTCNNDetector("cpu", min_face=40)
    (faces,) = detector.detect([frame])
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.9
    assert 40 <= face.box[0] and face.box[2] <= 136 and 12 <= face.box[1] and face.box[3] <= 108
    left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
    assert left_eye[0] < nose[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
