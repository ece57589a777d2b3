"""Sound as per-frame features: a log-mel spectrogram, and the window of an audio feature sequence around each frame.

An audio encoder turns a recording (mono float32 at its ``sample_rate``) into a sequence of feature vectors, one per
hop; sequence element j describes the samples around time ``offset_s + j * hop_s`` (its centre). The built-in encoder
is :class:`LogMel` (no weights: a short-time Fourier transform, a mel filterbank, the log); ``models.speech`` wraps
the Hugging Face speech encoders (Wav2Vec2, HuBERT, WavLM) with the same interface.

A video frame at time t takes the elements whose centres lie in ``[t - window / 2, t + window / 2)`` and summarises
them by their mean and standard deviation (:func:`pool_windows`): the level of each feature around the frame and how
much it moves there (syllables, pitch changes). A frame whose window holds no element (past the end of the recording)
has no audio feature and is masked downstream.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SAMPLE_RATE = 16000


def hz_to_mel(frequency):
    """The HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + np.asarray(frequency, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None):
    """(n_fft // 2 + 1, n_mels) triangular filters, equally spaced on the mel scale, each peaking at 1."""
    f_max = sample_rate / 2 if f_max is None else f_max
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    bins = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


class LogMel(torch.nn.Module):
    """Log mel energies: 25 ms Hann windows every 10 ms (``n_fft``, ``hop`` samples), power spectrum, ``n_mels``
    triangular mel filters up to half the sample rate, natural log with a floor of 1e-6.

    Element j spans samples ``[j * hop, j * hop + n_fft)``; a recording shorter than one window gives no element.
    """

    name = "logmel"

    def __init__(self, n_mels: int = 64, n_fft: int = 400, hop: int = 160, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.n_mels, self.n_fft, self.hop, self.sample_rate = n_mels, n_fft, hop, sample_rate
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filterbank(n_mels, n_fft, sample_rate)),
                             persistent=False)

    @property
    def dim(self) -> int:
        return self.n_mels

    @property
    def hop_s(self) -> float:
        return self.hop / self.sample_rate

    @property
    def offset_s(self) -> float:
        return self.n_fft / 2 / self.sample_rate

    def describe(self) -> dict:
        """What the features depend on besides the recording (part of the cache key)."""
        return {"encoder": self.name, "n_mels": self.n_mels, "n_fft": self.n_fft, "hop": self.hop,
                "sample_rate": self.sample_rate}

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, samples) float -> (B, elements, n_mels)."""
        if waves.shape[-1] < self.n_fft:
            return waves.new_zeros(waves.shape[0], 0, self.n_mels)
        spectrum = torch.stft(waves.float(), self.n_fft, self.hop, window=self.window, center=False,
                              return_complex=True)
        power = spectrum.real ** 2 + spectrum.imag ** 2  # (B, bins, elements)
        return torch.log(torch.clamp(power.transpose(1, 2) @ self.filters, min=1e-6))

    def encode(self, wave: np.ndarray, device=None) -> np.ndarray:
        """A whole recording -> (elements, n_mels) float32, in pieces of at most a minute so memory stays flat."""
        device = device or torch.device("cpu")
        module = self.to(device)
        count = elements(len(wave), self.n_fft, self.hop)
        out = np.zeros((count, self.n_mels), np.float32)
        piece = 6000  # elements per piece: one minute at a 10 ms hop
        with torch.inference_mode():
            for first in range(0, count, piece):
                last = min(first + piece, count)
                samples = torch.from_numpy(np.ascontiguousarray(
                    wave[first * self.hop:(last - 1) * self.hop + self.n_fft], np.float32)).to(device)
                out[first:last] = module(samples[None])[0].cpu().numpy()
        return out


def elements(samples: int, span: int, hop: int) -> int:
    """How many windows of ``span`` samples every ``hop`` fit in ``samples``."""
    return 0 if samples < span else (samples - span) // hop + 1


def pool_windows(sequence: np.ndarray, offset_s: float, hop_s: float, times: np.ndarray, window_s: float):
    """Each frame's audio feature: mean and standard deviation of the sequence elements whose centres lie in
    ``[t - window_s / 2, t + window_s / 2)`` of its time t.

    ``sequence`` (elements, D), element j centred at ``offset_s + j * hop_s``; ``times`` (frames,) in seconds.
    Returns ``(features (frames, 2 D) float32, available (frames,) bool)``; a frame whose window holds no element
    gets zeros and ``available`` False.
    """
    sequence = np.asarray(sequence, np.float64)
    times = np.asarray(times, np.float64)
    count, dim = sequence.shape
    # First element with centre >= a bound: ceil((bound - offset) / hop), kept in [0, count]. A small tolerance
    # keeps a centre that lies on a bound, whatever the rounding of the times.
    first = np.clip(np.ceil((times - window_s / 2 - offset_s) / hop_s - 1e-9), 0, count).astype(np.int64)
    end = np.clip(np.ceil((times + window_s / 2 - offset_s) / hop_s - 1e-9), 0, count).astype(np.int64)
    sums = np.zeros((count + 1, dim))
    squares = np.zeros((count + 1, dim))
    # Centre each feature first: prefix sums of squares lose precision on large means (log energies).
    centre = sequence.mean(axis=0) if count else np.zeros(dim)
    np.cumsum(sequence - centre, axis=0, out=sums[1:])
    np.cumsum((sequence - centre) ** 2, axis=0, out=squares[1:])
    held = (end - first).astype(np.float64)
    available = held > 0
    safe = np.maximum(held, 1.0)[:, None]
    mean = (sums[end] - sums[first]) / safe
    variance = np.maximum((squares[end] - squares[first]) / safe - mean ** 2, 0.0)
    features = np.concatenate([mean + centre, np.sqrt(variance)], axis=1)
    features[~available] = 0.0
    return features.astype(np.float32), available


def chunk_starts(samples: int, chunk: int, overlap: int, step: int) -> list[int]:
    """Starts (in samples, multiples of ``step``) of the pieces a long recording is encoded in: ``chunk`` samples
    each, consecutive pieces sharing ``2 * overlap``, the last one ending at the recording's end."""
    if samples <= chunk:
        return [0]
    advance = max(step, (chunk - 2 * overlap) // step * step)
    last = math.ceil((samples - chunk) / step) * step
    starts = list(range(0, last, advance))
    return starts + [last]
