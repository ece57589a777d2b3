"""Sound in the temporal stage: the synthetic recordings, the per-frame audio features and their cache, and
main_temporal.py with --audio."""

import numpy as np
import pytest

from datasets.synthetic import sound
from utils.abaw import EXPR_NAMES

HAPPINESS, NEUTRAL = EXPR_NAMES.index("Happiness"), EXPR_NAMES.index("Neutral")


def speech_statistics(samples, sample_rate=16000):
    """(RMS level in dB of the loud 20 ms frames, onsets per second of loud frames) measured from the waveform."""
    frames = samples[: len(samples) // 320 * 320].reshape(-1, 320).astype(np.float64)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    loud = level > np.median(level) + 6  # well above the room noise
    onsets = np.count_nonzero(loud[1:] & ~loud[:-1])
    return 10 * np.log10(np.mean(10 ** (level[loud] / 10))), onsets / max(loud.sum() * 0.02, 1e-9)


def test_sound_has_the_length_of_the_frames_is_deterministic_and_bounded():
    frames, fps = 37, 7.5
    traces = (np.linspace(-1, 1, frames), np.linspace(1, -1, frames), np.arange(frames) % 8)
    first = sound.render_sound(*traces, fps, np.random.default_rng(4))
    again = sound.render_sound(*traces, fps, np.random.default_rng(4))
    other = sound.render_sound(*traces, fps, np.random.default_rng(5))
    assert first.dtype == np.float32 and len(first) == round(frames / fps * 16000)
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.abs(first).max() <= 1.0 and np.abs(first).max() > 0.01
    assert len(sound.render_sound(*traces, fps, np.random.default_rng(4), sample_rate=8000)) == round(frames / fps
                                                                                                     * 8000)
    assert len(sound.render_sound([], [], [], 30, np.random.default_rng(0))) == 0


def test_arousal_makes_speech_louder_and_faster_on_average_but_not_in_every_recording():
    frames, fps = 80, 10
    calm, excited = [], []
    for seed in range(8):
        for value, into in ((-0.7, calm), (0.7, excited)):
            samples = sound.render_sound(np.zeros(frames), np.full(frames, value), np.full(frames, NEUTRAL), fps,
                                         np.random.default_rng(seed))
            into.append(speech_statistics(samples))
    calm, excited = np.array(calm), np.array(excited)
    assert excited[:, 0].mean() > calm[:, 0].mean() + 6  # louder
    assert excited[:, 1].mean() > calm[:, 1].mean() * 1.3  # more syllables per second of speech
    # the microphone's gain differs per recording: some calm recordings are louder than some excited ones
    assert calm[:, 0].max() > excited[:, 0].min()


def test_laughter_comes_with_happiness_at_about_its_rate():
    frames, fps = 600, 10
    times = np.arange(frames) / fps
    happy = list(sound._bursts(np.full(frames, HAPPINESS), np.full(frames, 0.6), times, 60.0,
                               np.random.default_rng(0)))
    neutral = list(sound._bursts(np.full(frames, NEUTRAL), np.full(frames, 0.0), times, 60.0,
                                 np.random.default_rng(0)))
    assert neutral == [] and all(kind == HAPPINESS for _, kind, _ in happy)
    assert 0.5 * sound.BURST_RATE_PER_S[HAPPINESS] * 60 < len(happy) < 1.5 * sound.BURST_RATE_PER_S[HAPPINESS] * 60


def test_the_synthetic_mtl_set_carries_each_videos_sound_and_frame_times_in_the_prepared_layout(mtl_data):
    import json
    import os
    import wave

    videos = json.loads((mtl_data / "videos.json").read_text())["videos"]
    folders = sorted(os.listdir(mtl_data / "cropped_aligned"))
    assert sorted(videos) == folders
    for name in folders:
        record = videos[name]
        numbers = sorted(int(image[:5]) for image in os.listdir(mtl_data / "cropped_aligned" / name))
        times = np.loadtxt(mtl_data / "times" / f"{name}.txt", ndmin=1)
        assert len(times) == record["frames"] == numbers[-1] and times[0] == 0 and (np.diff(times) > 0).all()
        assert record["tracks"] == {name: len(numbers)}
        wav = mtl_data / "audio" / f"{name}.wav"
        if record["audio_seconds"] is None:
            assert not wav.exists()
            continue
        with wave.open(str(wav)) as handle:
            assert handle.getframerate() == 16000 and handle.getnchannels() == 1 and handle.getsampwidth() == 2
            assert handle.getnframes() == round(record["audio_seconds"] * 16000)
        assert times[-1] < record["audio_seconds"] <= record["duration"] + 0.02


def test_synthetic_recordings_vary_their_frame_rate_and_some_are_silent():
    plan = {"numbers": np.array([1, 2, 3, 5, 6, 9, 10]), "va": np.zeros((7, 2)), "expression": np.zeros(7, int)}
    draws = [sound.video_recording(plan, np.random.default_rng(seed)) for seed in range(300)]
    silent = sum(samples is None for _, _, samples in draws) / len(draws)
    variable = sum(not np.allclose(np.diff(times), np.diff(times)[0], atol=2e-6) for _, times, _ in draws) / len(draws)
    assert abs(silent - sound.SILENT_RATE) < 0.06 and abs(variable - sound.VARIABLE_RATE) < 0.07
    assert {record["fps"] for record, times, _ in draws if np.allclose(np.diff(times), np.diff(times)[0],
                                                                       atol=2e-6)} == set(sound.FRAME_RATES)
    for record, times, _ in draws:
        assert len(times) == 10 and abs(record["fps"] - 9 / times[-1]) < 1e-4


# ---- per-frame audio features


def numpy_log_mel(samples, n_mels=64, n_fft=400, hop=160, sample_rate=16000):
    """Log mel energies computed directly: Hann-windowed frames, power spectrum, HTK-scale triangular filters."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    count = (len(samples) - n_fft) // hop + 1
    power = np.array([np.abs(np.fft.rfft(samples[j * hop:j * hop + n_fft] * window)) ** 2 for j in range(count)])
    top = 2595 * np.log10(1 + sample_rate / 2 / 700)
    edges = [700 * (10 ** (m / 2595) - 1) for m in np.linspace(0, top, n_mels + 2)]
    filters = np.zeros((n_fft // 2 + 1, n_mels))
    for k in range(n_fft // 2 + 1):
        frequency = k * sample_rate / n_fft
        for m in range(n_mels):
            low, centre, high = edges[m], edges[m + 1], edges[m + 2]
            if low <= frequency <= centre:
                filters[k, m] = (frequency - low) / (centre - low)
            elif centre < frequency <= high:
                filters[k, m] = (high - frequency) / (high - centre)
    return np.log(np.maximum(power @ filters, 1e-6))


def test_log_mel_matches_a_direct_numpy_computation():
    import torch

    from datasets.media.audio import LogMel

    samples = np.random.default_rng(0).normal(0, 0.1, 8000) * np.sin(np.linspace(0, 20, 8000))
    expected = numpy_log_mel(samples)
    ours = LogMel()(torch.from_numpy(samples.astype(np.float32))[None])[0].numpy()
    assert ours.shape == expected.shape == (48, 64)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(LogMel().encode(samples.astype(np.float32)), expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("rate", ["constant", "variable"])
def test_each_frame_takes_the_window_centred_on_its_time(rate):
    from datasets.media.audio import pool_windows

    rng = np.random.default_rng(1)
    hop, offset, window = 0.01, 0.0125, 0.5
    sequence = rng.normal(size=(600, 3))  # 6 s of elements centred at offset + j * hop
    intervals = np.full(80, 1 / 12) if rate == "constant" else rng.uniform(0.04, 0.13, 80)
    times = np.concatenate([[0.0], np.cumsum(intervals)])  # runs past the end of the sound
    features, available = pool_windows(sequence, offset, hop, times, window)
    centres = offset + hop * np.arange(len(sequence))
    for k, t in enumerate(times):
        inside = (centres >= t - window / 2) & (centres < t + window / 2)
        assert available[k] == inside.any()
        if inside.any():
            np.testing.assert_allclose(features[k], np.concatenate([sequence[inside].mean(0), sequence[inside].std(0)]),
                                       rtol=1e-4, atol=1e-5)
        else:
            assert (features[k] == 0).all() and t > 6.0
    assert available.sum() < len(times)  # frames past the end of the sound have none


def test_a_frames_audio_feature_comes_from_the_sound_around_its_time(mtl_data, tmp_path):
    """Through the whole pipeline on the synthetic set: WAV, times file, frame number, window, log-mel."""
    import json
    import wave

    from datasets import mtl as mtl_reader
    from engine.audio_features import AudioSource, split_audio

    images = list(mtl_reader.read_annotations(str(mtl_data / mtl_reader.TRAIN_FILE)).images)
    source = AudioSource("logmel", None, 0.4, "fp32")
    sound = split_audio(source, str(mtl_data / "audio"), "train", images, str(tmp_path), None, None)
    videos = json.loads((mtl_data / "videos.json").read_text())["videos"]
    checked = 0
    for row in range(0, len(images), 5):
        video, frame = images[row].split("/")
        if videos[video]["audio_seconds"] is None:
            assert not sound.available[row] and (sound.array[row] == 0).all()
            continue
        with wave.open(str(mtl_data / "audio" / f"{video}.wav")) as handle:
            samples = np.frombuffer(handle.readframes(handle.getnframes()), "<i2") / 32768.0
        t = np.loadtxt(mtl_data / "times" / f"{video}.txt")[int(frame[:5]) - 1]
        mel = numpy_log_mel(samples)
        centres = (200 + 160 * np.arange(len(mel))) / 16000
        inside = (centres >= t - 0.2) & (centres < t + 0.2)
        assert sound.available[row] == inside.any()
        if inside.any():
            np.testing.assert_allclose(sound.array[row], np.concatenate([mel[inside].mean(0), mel[inside].std(0)]),
                                       rtol=1e-3, atol=2e-3)
            checked += 1
    assert checked >= 5
