"""The sound of one synthetic person: a recording rendered from the same latent traces as the faces.

:func:`render_sound` turns a person's per-frame valence, arousal and expression into a mono 16 kHz track made the way
a room microphone would hear a talking person, so that audio features have to be learned from it rather than read
off it:

- Speech: the person talks in spurts separated by pauses and by longer stretches of listening (silence); a spurt is
  a train of syllables. A syllable is a voiced harmonic source (a pitch contour, a spectral tilt) shaped by the
  formants of a vowel, with a noisy consonant onset and some breath noise.
- Arousal, as in real speech, raises loudness, mean pitch and pitch range, speaking rate and the voice's brightness
  (a flatter spectral tilt), and shortens pauses; none of it is exact: each syllable draws its own level, pitch and
  length around those means, and a speaker has their own pitch, rate and talkativeness.
- Bursts: laughter during happiness (a run of breathy high-pitched pulses), sighs during sadness (a long falling
  exhalation), gasps at surprise and fear (a short inhalation); each is a chance per second, not a rule.
- The room: coloured background noise whose level drifts, sometimes mains hum, and occasional knocks; the
  microphone's gain differs per recording, so absolute loudness says little on its own.

Every random choice comes from the ``rng`` passed in, so a trace and a generator state give the same samples.

:func:`write_recordings` gives each video of a synthetic set its recording in the layout ``main_prepare.py`` writes
(``datasets.media.prepared``): ``audio/<video>.wav``, ``times/<video>.txt`` (the time of every decoded frame, the
numbering gaps included) and ``videos.json``. A video runs at 8, 10 or 12 frames per second, some at a variable rate
(frame intervals that wander by up to a third), and some have no sound at all (no WAV, ``audio_seconds`` null).
"""

from __future__ import annotations

import os

import numpy as np

from datasets.media import prepared
from utils.abaw import EXPR_NAMES

SAMPLE_RATE = 16000
HAPPINESS, SADNESS, SURPRISE, FEAR = (EXPR_NAMES.index(name) for name in ("Happiness", "Sadness", "Surprise", "Fear"))

# Vowels as their first three formants (Hz, an adult average; a speaker scales them).
VOWELS = np.array([(730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410), (300, 870, 2240),
                   (660, 1720, 2410), (490, 1350, 1690)], dtype=np.float64)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])
MAX_HARMONIC_HZ = 4000.0  # the harmonic source stops here; consonants and breath fill the band above

# Speech timing (seconds) and how arousal (0 calm .. 1 excited, from [-1, 1]) moves it.
SYLLABLES_PER_S = (2.2, 7.0)  # speaking rate at arousal 0 and 1
SPURT_S = 1.8  # mean length of a talk spurt
PAUSE_S = (0.9, 0.35)  # mean pause between spurts at arousal 0 and 1
LISTEN_S = (1.0, 3.0)  # a stretch of listening (no speech) lasts this long
LEVEL_DB = (-38.0, -16.0)  # a syllable's RMS level (dBFS) at arousal 0 and 1, before the microphone's gain
PITCH_SHIFT_ST = (-1.5, 3.5)  # mean pitch relative to the speaker's base (semitones) at arousal 0 and 1
PITCH_RANGE_ST = (1.0, 7.0)  # spread of syllable pitch (semitones) at arousal 0 and 1
TILT = (1.7, 0.9)  # harmonic amplitude falls as k ** -tilt: steeper (darker) at arousal 0
BURST_RATE_PER_S = {HAPPINESS: 0.35, SADNESS: 0.22, SURPRISE: 0.25, FEAR: 0.2}

# Recordings of a synthetic set
FRAME_RATES = (8.0, 10.0, 12.0)
VARIABLE_RATE = 0.15  # share of videos at a variable frame rate
SILENT_RATE = 0.1  # share of videos without sound
TRACE_RATE = 50  # traces are resampled to this many values per second of sound (a 20 ms grid)


def render_sound(valence, arousal, expression, fps: float, rng: np.random.Generator,
                 sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A mono recording (float32 in [-1, 1]) of ``round(len(valence) / fps * sample_rate)`` samples.

    ``valence``, ``arousal`` (in [-1, 1]) and ``expression`` (MTL expression indices) are one person's traces, one
    value per frame at ``fps`` frames per second; frame k is at time k / fps.
    """
    valence = np.asarray(valence, np.float64)
    arousal = np.asarray(arousal, np.float64)
    expression = np.asarray(expression, np.int64)
    if not (len(valence) == len(arousal) == len(expression)):
        raise ValueError(f"traces of {len(valence)}, {len(arousal)} and {len(expression)} frames")
    if fps <= 0 or sample_rate <= 0:
        raise ValueError(f"fps and sample_rate must be positive, got {fps} and {sample_rate}")
    samples = int(round(len(valence) / fps * sample_rate))
    if samples == 0:
        return np.zeros(0, np.float32)
    frame_times = np.arange(len(valence)) / fps
    duration = samples / sample_rate

    def excitement(t: float) -> float:  # arousal mapped to 0..1 at time t
        return float(np.clip((np.interp(t, frame_times, arousal) + 1.0) / 2.0, 0.0, 1.0))

    speaker = {
        "f0": rng.uniform(95.0, 235.0),  # base pitch (Hz): low male to high female voices
        "formants": rng.uniform(0.88, 1.16),  # vocal tract length
        "rate": rng.uniform(0.8, 1.2),
        "talkative": rng.uniform(0.75, 1.0),  # share of turns in which the person speaks rather than listens
        "breathy": rng.uniform(0.03, 0.15),
    }
    gain = 10 ** (rng.uniform(-9.0, 6.0) / 20)  # microphone distance and input gain
    voice = np.zeros(samples)
    for start, length, params in _syllables(duration, excitement, valence, frame_times, speaker, rng):
        _add(voice, _syllable(length, params, speaker, sample_rate, rng), int(start * sample_rate))
    for start, kind, level in _bursts(expression, valence, frame_times, duration, rng):
        _add(voice, _burst(kind, level, speaker, sample_rate, rng), int(start * sample_rate))
    room = _room_noise(samples, sample_rate, rng)
    return np.clip(gain * voice + room, -1.0, 1.0).astype(np.float32)


def _lerp(pair: tuple, amount: float) -> float:
    return pair[0] + (pair[1] - pair[0]) * amount


def _syllables(duration: float, excitement, valence, frame_times, speaker: dict, rng: np.random.Generator):
    """Yield ``(start s, length s, params)`` of each syllable: spurts of syllables between pauses and listening."""
    t = rng.uniform(0.0, 0.8)
    while t < duration:
        if rng.random() > speaker["talkative"]:  # listening: a stretch without speech
            t += rng.uniform(*LISTEN_S)
            continue
        spurt_end = t + rng.gamma(2.0, SPURT_S / 2)
        phrase_start = t
        while t < min(spurt_end, duration):
            level = excitement(t)
            rate = _lerp(SYLLABLES_PER_S, level) * speaker["rate"] * rng.uniform(0.9, 1.1)
            length = rng.uniform(0.55, 0.85) / rate
            # Pitch: a mean that rises with arousal, a spread that widens with it, and declination over the phrase.
            spread = _lerp(PITCH_RANGE_ST, level)
            pitch = _lerp(PITCH_SHIFT_ST, level) + rng.normal(0.0, spread / 2) - 1.2 * (t - phrase_start)
            positive = max(float(np.interp(t, frame_times, valence)), 0.0)
            yield t, length, {
                "pitch_st": pitch, "glide_st": rng.normal(0.0, 0.5 + spread / 3),
                "level_db": _lerp(LEVEL_DB, level) + rng.normal(0.0, 1.5),
                "tilt": _lerp(TILT, level) + rng.normal(0.0, 0.1),
                # Smiling spreads the lips, which raises the formants a little ("smiled speech").
                "vowel": VOWELS[rng.integers(len(VOWELS))] * (1.0 + 0.05 * positive * rng.uniform(0.5, 1.5)),
                "consonant": rng.random() < 0.7,
            }
            t += length + rng.uniform(0.1, 0.45) / rate
        t += rng.exponential(_lerp(PAUSE_S, excitement(t))) + 0.1


def _envelope(count: int, attack: int, release: int) -> np.ndarray:
    """Raised-cosine attack and release around a flat middle."""
    envelope = np.ones(count)
    attack, release = min(attack, count // 2), min(release, count // 2)
    if attack:
        envelope[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / attack)
    if release:
        envelope[count - release:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(1, release + 1) / release)
    return envelope


def _harmonics(f0: np.ndarray, formants: np.ndarray, tilt: float, sample_rate: int) -> np.ndarray:
    """A voiced source with pitch track ``f0`` (Hz per sample) through the resonances at ``formants``."""
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    mean_f0 = float(f0.mean())
    count = max(1, int(min(MAX_HARMONIC_HZ, 0.45 * sample_rate) // (1.05 * f0.max())))
    numbers = np.arange(1, count + 1)
    frequencies = numbers * mean_f0
    response = (1.0 / (1.0 + ((frequencies[:, None] - formants[None, :]) / FORMANT_BANDWIDTHS[None, :]) ** 2))
    amplitudes = numbers ** -tilt * (0.05 + response @ np.array([1.0, 0.7, 0.35]))
    return amplitudes @ np.sin(numbers[:, None] * phase[None, :])


def _coloured_noise(count: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise with power falling as frequency ** -exponent (0 white, 1 pink, 2 brown)."""
    spectrum = np.fft.rfft(rng.normal(size=count))
    frequencies = np.maximum(np.fft.rfftfreq(count), 1.0 / max(count, 1))
    noise = np.fft.irfft(spectrum * frequencies ** (-exponent / 2), n=count)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _rms_scaled(signal: np.ndarray, level_db: float) -> np.ndarray:
    return signal * (10 ** (level_db / 20) / (np.sqrt(np.mean(signal ** 2)) + 1e-12))


def _syllable(length: float, params: dict, speaker: dict, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    count = max(8, int(length * sample_rate))
    semitones = params["pitch_st"] + params["glide_st"] * np.linspace(-0.5, 0.5, count)
    f0 = speaker["f0"] * 2 ** (semitones / 12) * (1 + 0.01 * np.sin(2 * np.pi * rng.uniform(4, 7) *
                                                                      np.arange(count) / sample_rate))
    voiced = _harmonics(f0, params["vowel"] * speaker["formants"], params["tilt"], sample_rate)
    voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-12
    breath = np.diff(rng.normal(size=count + 1)) * speaker["breathy"]
    sound = (voiced + breath) * _envelope(count, int(0.02 * sample_rate), int(0.05 * sample_rate))
    if params["consonant"]:  # a fricative or plosive onset: bright noise for 20-60 ms
        onset = int(rng.uniform(0.02, 0.06) * sample_rate)
        hiss = np.diff(rng.normal(size=min(onset, count) + 1)) * rng.uniform(0.2, 0.6)
        sound[:len(hiss)] += hiss * _envelope(len(hiss), 16, len(hiss) // 2)
    return _rms_scaled(sound, params["level_db"])


def _bursts(expression, valence, frame_times, duration: float, rng: np.random.Generator):
    """Yield ``(start s, kind, level dB)`` of the non-speech vocal bursts: a chance per second of each expression."""
    step = 0.25
    for t in np.arange(0.0, duration, step):
        frame = min(int(np.searchsorted(frame_times, t, side="right")) - 1, len(expression) - 1)
        label = int(expression[max(frame, 0)])
        rate = BURST_RATE_PER_S.get(label, 0.0)
        if label == HAPPINESS:  # the happier, the likelier a laugh
            rate *= float(np.clip(valence[max(frame, 0)] / 0.6, 0.2, 1.5))
        if rate and rng.random() < rate * step:
            yield t + rng.uniform(0, step), label, rng.uniform(-28.0, -16.0)


def _burst(kind: int, level_db: float, speaker: dict, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    if kind == HAPPINESS:  # laughter: 3-7 breathy "ha" pulses at about 5 per second, high and falling in pitch
        pulses, period = int(rng.integers(3, 8)), rng.uniform(0.17, 0.24)
        count = int((pulses * period + 0.1) * sample_rate)
        sound = np.zeros(count)
        for pulse in range(pulses):
            size = int(period * rng.uniform(0.5, 0.7) * sample_rate)
            f0 = speaker["f0"] * rng.uniform(1.4, 2.0) * 2 ** (-pulse / 12) * np.ones(size)
            voiced = _harmonics(f0, VOWELS[0] * speaker["formants"], 1.0, sample_rate)
            voiced /= np.sqrt(np.mean(voiced ** 2)) + 1e-12
            aspirated = voiced * rng.uniform(0.5, 0.9) + rng.normal(size=size) * rng.uniform(0.4, 0.8)
            gain = 0.85 ** pulse
            _add(sound, gain * aspirated * _envelope(size, size // 6, size // 2), int(pulse * period * sample_rate))
        return _rms_scaled(sound, level_db)
    if kind == SADNESS:  # a sigh: a slow exhalation, dark noise that swells fast and fades slowly
        count = int(rng.uniform(0.7, 1.4) * sample_rate)
        sound = _coloured_noise(count, 1.2, rng) * _envelope(count, count // 5, count * 3 // 5)
        return _rms_scaled(sound, level_db - 6.0)
    # a gasp (surprise, fear): a short, bright inhalation
    count = int(rng.uniform(0.15, 0.3) * sample_rate)
    sound = _coloured_noise(count, 0.3, rng) * _envelope(count, count // 3, count // 3)
    return _rms_scaled(sound, level_db - 4.0)


def _room_noise(samples: int, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Background noise with a drifting level, sometimes mains hum, and now and then a knock."""
    base_db = rng.uniform(-58.0, -34.0)
    seconds = samples / sample_rate
    knots = np.arange(0.0, seconds + 2.0, 1.0)
    drift_db = np.interp(np.arange(samples) / sample_rate, knots, rng.normal(0.0, 3.0, len(knots)))
    noise = _coloured_noise(samples, rng.uniform(0.0, 2.0), rng) * 10 ** ((base_db + drift_db) / 20)
    if rng.random() < 0.3:  # mains hum at 50 or 60 Hz with two harmonics
        mains = (50.0, 60.0)[int(rng.integers(2))]
        time = np.arange(samples) / sample_rate
        hum = sum(np.sin(2 * np.pi * k * mains * time + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3))
        noise += hum * 10 ** (rng.uniform(-55.0, -40.0) / 20)
    for _ in range(int(rng.poisson(0.08 * seconds))):  # knocks, a chair, a door: short decaying clicks
        size = int(0.05 * sample_rate)
        click = rng.normal(size=size) * np.exp(-np.arange(size) / (0.008 * sample_rate))
        _add(noise, click * 10 ** (rng.uniform(-35.0, -20.0) / 20), int(rng.integers(0, samples)))
    return noise


def _add(target: np.ndarray, sound: np.ndarray, start: int) -> None:
    """Mix ``sound`` into ``target`` from sample ``start``, cut at the end."""
    if start >= len(target) or start + len(sound) <= 0:
        return
    first = max(start, 0)
    end = min(start + len(sound), len(target))
    target[first:end] += sound[first - start:end - start]


def recording_times(numbers, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """(average fps, the time of each decoded frame 1 .. ``numbers[-1]``) of a video whose listed frames have the
    frame ``numbers``: a constant rate, or for ``VARIABLE_RATE`` of videos intervals that wander around it."""
    fps = float(rng.choice(FRAME_RATES))
    count = int(numbers[-1])
    intervals = np.full(count - 1, 1.0 / fps)
    if rng.random() < VARIABLE_RATE:
        wander = np.interp(np.arange(count - 1), np.linspace(0, max(count - 2, 0), 5), rng.uniform(-0.33, 0.33, 5))
        intervals *= 1.0 + wander
    times = np.concatenate([[0.0], np.cumsum(intervals)])
    return (count - 1) / times[-1] if count > 1 else fps, np.round(times, 6)


def video_recording(plan: dict, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE):
    """(record for videos.json, frame times, samples or None) of one planned video of ``datasets.synthetic``: the
    sound is rendered from its latent valence, arousal and expression (``plan["va"]``, ``plan["expression"]``, one
    row per listed frame), resampled from the listed frames' times to a 20 ms grid."""
    numbers = np.asarray(plan["numbers"], np.int64)
    fps, times = recording_times(numbers, rng)
    silent = rng.random() < SILENT_RATE
    listed = times[numbers - 1]
    duration = float(times[-1]) + 1.0 / fps  # the last frame lasts one average interval
    grid = np.arange(int(round(duration * TRACE_RATE))) / TRACE_RATE
    record = {"fps": round(fps, 6), "frames": int(numbers[-1]), "duration": round(duration, 6),
              "audio_seconds": None, "tracks": {}}
    if silent:
        return record, times, None
    valence = np.interp(grid, listed, plan["va"][:, 0])
    arousal = np.interp(grid, listed, plan["va"][:, 1])
    expression = plan["expression"][np.clip(np.searchsorted(listed, grid, side="right") - 1, 0, len(listed) - 1)]
    samples = render_sound(valence, arousal, expression, TRACE_RATE, rng, sample_rate)
    record["audio_seconds"] = round(len(samples) / sample_rate, 6)
    return record, times, samples


def write_recordings(out_dir, names: list, plans: list, rng_key: list) -> int:
    """Write every video's sound, frame times and ``videos.json`` record (module docstring); video i draws from
    ``np.random.default_rng(rng_key + [i])``. Returns the number of videos without sound."""
    os.makedirs(os.path.join(out_dir, prepared.AUDIO), exist_ok=True)
    os.makedirs(os.path.join(out_dir, prepared.TIMES), exist_ok=True)
    records, silent = {}, 0
    for index, (name, plan) in enumerate(zip(names, plans)):
        record, times, samples = video_recording(plan, np.random.default_rng(list(rng_key) + [index]))
        record["tracks"] = {name: len(plan["numbers"])}
        records[name] = record
        prepared.write_frame_times(prepared.times_path(out_dir, name), times)
        if samples is None:
            silent += 1
        else:
            prepared.write_wav(prepared.wav_path(out_dir, name), samples)
    prepared.write_videos(out_dir, records)
    return silent
