"""Sound in the temporal stage: the synthetic recordings, the per-frame audio features and their cache, and
main_temporal.py with --audio."""

import numpy as np
import pytest

from datasets.synthetic import sound
from utils.abaw import EXPR_NAMES

HAPPINESS, NEUTRAL = EXPR_NAMES.index("Happiness"), EXPR_NAMES.index("Neutral")


def speech_statistics(samples, sample_rate=16000):
    """(RMS level in dB of the loud 20 ms frames, syllable-like bursts per second) measured from the waveform: a burst
    is a run of at least 60 ms well above the room noise (the quietest frames)."""
    frames = samples[: len(samples) // 320 * 320].reshape(-1, 320).astype(np.float64)
    level = 10 * np.log10(np.mean(frames ** 2, axis=1) + 1e-12)
    loud = level > np.percentile(level, 10) + 8
    edges = np.diff(np.concatenate([[0], loud.astype(int), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    bursts = np.count_nonzero(ends - starts >= 3)
    return 10 * np.log10(np.mean(10 ** (level[loud] / 10))), bursts / (len(samples) / sample_rate)


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
    # the same speaker before the same microphone (same seed) is louder when excited, in every recording
    assert (excited[:, 0] > calm[:, 0]).all()


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


# ---- speech encoders


def tiny_wav2vec2(folder, seed=0):
    """A random Wav2Vec2 of a few thousand weights, saved as a user's folder would be."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(seed)
    config = Wav2Vec2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_conv_pos_embeddings=8,
                            num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def encoder_folder(tmp_path_factory):
    return tiny_wav2vec2(tmp_path_factory.mktemp("wav2vec2"))


def test_chunked_encoding_equals_one_pass(encoder_folder):
    """Hidden state 0 sees 0.1 s around each element: chunks overlapping by more give one pass's values. A clip that
    fits in one chunk gives the model's own output at any layer."""
    import torch
    from transformers import Wav2Vec2Model

    from models.speech import SpeechEncoder

    samples = np.random.default_rng(2).normal(0, 0.1, 3 * 16000).astype(np.float32)
    whole = SpeechEncoder.load(str(encoder_folder), 0, chunk_s=10).encode(samples)
    chunked = SpeechEncoder.load(str(encoder_folder), 0, chunk_s=0.5, overlap_s=0.15, batch_size=3).encode(samples)
    assert whole.shape == chunked.shape == (2398, 16)
    np.testing.assert_allclose(chunked, whole, rtol=1e-4, atol=1e-5)
    model = Wav2Vec2Model.from_pretrained(encoder_folder).eval()
    normalised = (samples - samples.mean()) / np.sqrt(samples.var() + 1e-7)
    with torch.no_grad():
        states = model(torch.from_numpy(normalised)[None], output_hidden_states=True).hidden_states
    for layer in (1, 2):
        np.testing.assert_allclose(SpeechEncoder.load(str(encoder_folder), layer, chunk_s=10).encode(samples),
                                   states[layer][0].numpy(), rtol=1e-4, atol=1e-5)


def test_the_cache_key_changes_with_model_layer_and_window(encoder_folder, tmp_path):
    from engine.audio_features import AudioSource

    base = AudioSource(str(encoder_folder), 1, 1.0, "fp32")
    assert base.key == AudioSource(str(encoder_folder), 1, 1.0, "fp32").key
    other_model = AudioSource(str(tiny_wav2vec2(tmp_path / "other", seed=1)), 1, 1.0, "fp32")
    keys = {base.key, other_model.key, AudioSource(str(encoder_folder), 2, 1.0, "fp32").key,
            AudioSource(str(encoder_folder), 1, 0.5, "fp32").key, AudioSource(str(encoder_folder), 1, 1.0,
                                                                               "bfloat16").key,
            AudioSource("logmel", None, 1.0, "fp32").key, AudioSource("logmel", None, 0.5, "fp32").key}
    assert len(keys) == 7


# ---- main_temporal.py with sound


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from test_temporal import make_backbone

    return make_backbone(tmp_path_factory.mktemp("backbone") / "emma.pth")


def temporal_flags(data, backbone, *extra):
    from test_temporal import FAST

    return ["--data-dir", str(data), "--backbone-ckpt", str(backbone), *FAST, *map(str, extra)]


@pytest.fixture(scope="module")
def audio_run(mtl_data, backbone, tmp_path_factory):
    from engine.entry import main

    out = tmp_path_factory.mktemp("audio_run")
    main("temporal", "", temporal_flags(mtl_data, backbone, "--audio", "logmel", "--epochs", "2", "--output-dir", out))
    return out


def copy_of(data, tmp_path):
    import shutil

    shutil.copytree(data, tmp_path / "data")
    return tmp_path / "data"


def videos_json(data):
    import json

    return json.loads((data / "videos.json").read_text())


def write_videos_json(data, content):
    import json

    (data / "videos.json").write_text(json.dumps(content))


def test_training_with_sound_records_it_and_evaluation_reads_the_same_features(audio_run, mtl_data, tmp_path):
    import json

    import torch

    from engine.entry import main

    config = torch.load(audio_run / "checkpoints" / "best_mtl.pth", weights_only=True)["model_config"]
    assert config["audio_dim"] == 128 and config["fusion"] == "concat" and config["audio"]["audio"] == "logmel"
    index = json.loads(next((audio_run / "features").glob("audio-*/train.json")).read_text())
    assert index["dim"] == 128 and index["window"] == 1.0
    main("temporal", "", ["--eval", "--ckpt", str(audio_run / "checkpoints" / "best_mtl.pth"), "--data-dir",
                          str(mtl_data), "--output-dir", str(tmp_path), "--feature-dir", str(audio_run / "features"),
                          "--num-workers", "0", "--device", "cpu", "--precision", "fp32"])
    assert (tmp_path / "test_predictions.txt").read_bytes() == (audio_run / "test_predictions.txt").read_bytes()


def test_a_silent_video_gets_a_mask_not_an_error(mtl_data, tmp_path):
    from datasets import mtl as mtl_reader
    from datasets.temporal import WindowSet
    from engine.audio_features import AudioSource, split_audio

    data = copy_of(mtl_data, tmp_path)
    images = list(mtl_reader.read_annotations(str(data / mtl_reader.TRAIN_FILE)).images)
    silent = images[0].split("/")[0]
    content = videos_json(data)
    content["videos"][silent]["audio_seconds"] = None
    write_videos_json(data, content)
    (data / "audio" / f"{silent}.wav").unlink(missing_ok=True)
    sound = split_audio(AudioSource("logmel", None, 1.0, "fp32"), str(data / "audio"), "train", images,
                        str(tmp_path / "features"), None, None)
    rows = np.array([image.startswith(silent + "/") for image in images])
    assert not sound.available[rows].any() and sound.available[~rows].any()
    windows = WindowSet(np.zeros((len(images), 2), np.float32), images, 8, 4, audio=sound.array,
                        audio_available=sound.available, audio_centre=True)
    for index in range(len(windows)):
        (_, _, valid, audio, heard) = windows[index][0]
        members = windows.table[index]
        assert (heard.numpy() == (valid.numpy() & sound.available[np.maximum(members, 0)])).all()
        assert (audio[~heard] == 0).all()


def test_a_tiny_wav2vec2_folder_runs_as_audio_path_without_the_network(mtl_data, backbone, encoder_folder, tmp_path,
                                                                       monkeypatch):
    import torch

    from engine.entry import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    main("temporal", "", temporal_flags(mtl_data, backbone, "--audio", encoder_folder, "--audio-layer", "1",
                                        "--fusion", "cross", "--epochs", "1", "--output-dir", tmp_path))
    config = torch.load(tmp_path / "checkpoints" / "last.pth", weights_only=True)["model_config"]
    assert config["audio"]["layer"] == 1 and config["audio_dim"] == 32 and config["fusion"] == "cross"
    assert np.load(next((tmp_path / "features").glob("audio-*/train.npy"))).shape[1] == 32
    assert (tmp_path / "test_predictions.txt").is_file()


def test_sound_alone_trains_without_a_backbone(mtl_data, tmp_path):
    from test_temporal import FAST

    from engine.entry import main

    main("temporal", "", ["--data-dir", str(mtl_data), "--features", "none", "--audio", "logmel", "--epochs", "1",
                          "--output-dir", str(tmp_path), *FAST])
    rows = (tmp_path / "test_predictions.txt").read_text().splitlines()
    assert rows[0].startswith("image,valence,arousal") and len(rows) > 1


def one_error_line(result) -> str:
    """The one line a user error prints (progress bars, redrawn with carriage returns, aside)."""
    lines = [line.split("\r")[-1].strip() for line in result.stderr.splitlines()]
    errors = [line for line in lines if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    return errors[0]


def test_bad_sound_input_gives_one_line_each(mtl_data, backbone, tmp_path, capsys):
    import wave

    from conftest import run_main

    data = copy_of(mtl_data, tmp_path)
    content = videos_json(data)
    heard = sorted(video for video, record in content["videos"].items() if record["audio_seconds"])
    run = ["--epochs", "1", "--output-dir", tmp_path / "run", "--feature-dir", tmp_path / "features"]

    # a WAV of another sample rate
    path = data / "audio" / f"{heard[0]}.wav"
    with wave.open(str(path)) as handle:
        frames = handle.readframes(handle.getnframes())
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1), handle.setsampwidth(2), handle.setframerate(8000), handle.writeframes(frames)
    line = one_error_line(run_main(capsys, "main_temporal.py", *temporal_flags(data, backbone, "--audio", "logmel",
                                                                                *run), check=False))
    assert f"{heard[0]}.wav" in line and "8000 Hz" in line

    # a WAV that videos.json promises, missing
    path.unlink()
    line = one_error_line(run_main(capsys, "main_temporal.py", *temporal_flags(data, backbone, "--audio", "logmel",
                                                                                *run), check=False))
    assert f"{heard[0]}.wav" in line and "missing" in line

    # an encoder folder that is not one
    broken = tmp_path / "broken_encoder"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    line = one_error_line(run_main(capsys, "main_temporal.py", *temporal_flags(
        mtl_data, backbone, "--audio", broken, *run), check=False))
    assert str(broken) in line and "not a readable speech encoder folder" in line

    # --audio where no video has sound
    for record in content["videos"].values():
        record["audio_seconds"] = None
    write_videos_json(data, content)
    line = one_error_line(run_main(capsys, "main_temporal.py", *temporal_flags(data, backbone, "--audio", "logmel",
                                                                                *run), check=False))
    assert "no sound found" in line

    # --audio with no prepared layout beside the WAV folder
    line = one_error_line(run_main(capsys, "main_temporal.py", *temporal_flags(
        mtl_data, backbone, "--audio", "logmel", "--audio-dir", tmp_path / "elsewhere" / "audio", *run),
        check=False))
    assert "videos.json" in line


@pytest.mark.slow
def test_one_and_two_processes_write_the_same_audio_features_and_predictions(audio_run, mtl_data, tmp_path):
    from conftest import one_and_two_processes

    common = ["--eval", "--ckpt", audio_run / "checkpoints" / "best_mtl.pth", "--data-dir", mtl_data,
              "--num-workers", "0", "--device", "cpu", "--precision", "fp32", "--extract-batch-size", "8",
              "--eval-batch-size", "1"]
    one_and_two_processes("main_temporal.py", common, tmp_path / "one", tmp_path / "two")
    for name in ("test_predictions.txt", "val_predictions.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    for split in ("val", "test"):
        one = list((tmp_path / "one" / "features").glob(f"audio-*/{split}.npy"))
        two = list((tmp_path / "two" / "features").glob(f"audio-*/{split}.npy"))
        assert len(one) == len(two) == 1 and one[0].read_bytes() == two[0].read_bytes()


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run_with_sound(mtl_data, backbone, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch
    from conftest import ROOT, run_entry

    flags = temporal_flags(mtl_data, backbone, "--audio", "logmel", "--epochs", "30", "--feature-dir",
                           tmp_path / "features")
    run_entry("main_temporal.py", *flags, "--output-dir", tmp_path / "straight")
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "main_temporal.py", *map(str, flags), "--output-dir",
                                str(tmp_path / "killed")], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "checkpoints" / "last.pth"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if torch.load(last, weights_only=True)["epoch"] >= 2:
                break
        except Exception:  # not written yet, or being replaced
            time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    run_entry("main_temporal.py", *flags, "--output-dir", tmp_path / "killed")
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pth", weights_only=True)
    resumed = torch.load(last, weights_only=True)
    assert straight["epoch"] == resumed["epoch"] == 29
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key


# ---- the model's sound stream


@pytest.mark.parametrize("fusion", ["concat", "cross"])
def test_the_model_hears_frames_with_sound_and_ignores_the_values_of_frames_without(fusion):
    import torch

    from models.temporal import TemporalModel

    torch.manual_seed(0)
    for kind in ("transformer", "tcn"):
        model = TemporalModel(in_dim=3, kind=kind, width=16, layers=1, heads=2, dropout=0.0, window=6, audio_dim=4,
                              fusion=fusion).eval()
        x, gaps = torch.randn(2, 6, 3), torch.ones(2, 6)
        valid = torch.ones(2, 6, dtype=torch.bool)
        audio = torch.randn(2, 6, 4)
        heard = torch.tensor([[True] * 4 + [False] * 2, [False] * 6])  # the second window has no sound at all
        out = model(x, gaps, valid, audio, heard)
        assert torch.isfinite(out).all()
        noisy = audio.clone()
        noisy[~heard] = torch.randn(int((~heard).sum()), 4) * 100
        assert torch.allclose(model(x, gaps, valid, noisy, heard), out, atol=1e-5)
        louder = audio.clone()
        louder[0, 1, 0] += 3.0
        assert not torch.allclose(model(x, gaps, valid, louder, heard)[0], out[0])
        # a window without sound is predicted as if no sound had been given
        assert torch.allclose(model(x, gaps, valid)[1], out[1], atol=1e-6)


def test_a_model_without_sound_keeps_the_parameters_and_config_of_a_visual_model():
    from models.temporal import TemporalModel

    model = TemporalModel(in_dim=5, width=8, layers=1, heads=2, window=4)
    assert set(model.config) == {"name", "in_dim", "kind", "width", "layers", "heads", "dropout", "positions", "window",
                                 "kernel", "out_width", "features"}
    top = {name.split(".")[0] for name in model.state_dict()}
    assert top == {"input_norm", "embed", "encoder", "norm", "head"}
    assert tuple(model.embed.weight.shape) == (8, 6)


def test_audio_and_frame_dropout_are_drawn_per_window_and_epoch_from_the_seed():
    from datasets.temporal import TrainWindows, WindowAugment
    from datasets.transforms import sample_rng

    images = [f"video{v}/{n:05d}.jpg" for v in range(3) for n in range(1, 41)]
    features = np.ones((len(images), 2), np.float32)
    windows = TrainWindows(features, images, np.zeros((len(images), 15), np.float32), 8, 4, audio_dropout=0.3,
                           frame_dropout=0.5, audio=np.ones((len(images), 3), np.float32),
                           audio_available=np.ones(len(images), bool))
    augment = WindowAugment(windows)
    draws = [[augment.params(sample_rng(3, epoch, i)) for i in range(len(windows))] for epoch in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2]
    many = np.array([augment.params(sample_rng(3, epoch, i))[1:] for epoch in range(10) for i in range(len(windows))])
    assert 0.2 < many[:, 0].mean() < 0.4 and 0.25 < many[:, 1].mean() < 0.45  # frames: half of the other 70%
    assert not (many[:, 0] & many[:, 1]).any()  # never both streams of a window
    slot, (offset, drop_audio, _) = next((i, d) for i, d in enumerate(draws[0]) if d[1])
    inputs, _ = windows.sample(slot, offset, drop_audio)
    assert not inputs[4].any() and (inputs[3] == 0).all() and (inputs[0][inputs[2]] == 1).all()
    inputs, _ = windows.sample(slot, offset, False, True)
    assert inputs[4][inputs[2]].all() and (inputs[0] == 0).all() and inputs[2].any()
