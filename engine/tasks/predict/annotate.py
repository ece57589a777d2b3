"""The annotated copy of a video (``predict.py --annotate``): every frame of the source, upright, with each tracked
face's box, track number, expression and a valence/arousal gauge drawn on it, at the source's frame times, with the
source's sound; H.264 and AAC in MP4, through PyAV.

The source is decoded a second time, after prediction, because a track's number is known only when the tracker has
seen the whole video; frames are drawn and encoded one at a time, and the sound is interleaved as the frames go, so
memory stays flat whatever the length.
"""

from __future__ import annotations

import fractions
import os

import cv2
import numpy as np

from datasets.media.video import first_frame_time, read_audio, read_frames
from engine.tasks.predict.figures import EXPRESSION_COLOURS
from utils import abaw

TIME_BASE = fractions.Fraction(1, 90000)  # MPEG's clock: frame times to 11 microseconds


def _bgr(rgb) -> tuple[int, int, int]:
    return tuple(int(round(255 * c)) for c in rgb[::-1])


def draw_faces(image: np.ndarray, rows) -> np.ndarray:
    """``image`` (upright RGB) with the faces of ``rows`` (one frame's rows of the prediction table) drawn on it."""
    canvas = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    height, width = canvas.shape[:2]
    scale = max(0.35, min(width, height) / 720)
    thick = max(1, int(round(2 * scale)))
    for row in rows[rows["track"].notna()].itertuples(index=False):
        colour = _bgr(EXPRESSION_COLOURS[abaw.EXPR_NAMES.index(row.expression)])
        x1, y1, x2, y2 = (int(round(v)) for v in (row.x1, row.y1, row.x2, row.y2))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thick)
        label = f"#{int(row.track)} {row.expression}"
        (text_w, text_h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
        top = max(0, y1 - text_h - base - 4)
        cv2.rectangle(canvas, (x1, top), (x1 + text_w + 4, top + text_h + base + 4), colour, -1)
        cv2.putText(canvas, label, (x1 + 2, top + text_h + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (0, 0, 0),
                    thick, cv2.LINE_AA)
        _gauge(canvas, row, x2 + 4, y1, max(28, int(round(0.45 * (y2 - y1)))), scale)
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB)


def _gauge(canvas: np.ndarray, row, left: int, top: int, side: int, scale: float) -> None:
    """A valence (x) / arousal (y) square beside the box, with the face's point on it; moved inside the frame."""
    height, width = canvas.shape[:2]
    left = min(max(0, left), max(0, width - side - 1))
    top = min(max(0, top), max(0, height - side - 1))
    region = canvas[top:top + side, left:left + side]
    region[:] = (0.45 * region + 0.55 * 30).astype(np.uint8)  # a dark, see-through panel
    centre = (left + side // 2, top + side // 2)
    cv2.line(canvas, (left, centre[1]), (left + side, centre[1]), (150, 150, 150), 1)
    cv2.line(canvas, (centre[0], top), (centre[0], top + side), (150, 150, 150), 1)
    cv2.rectangle(canvas, (left, top), (left + side, top + side), (220, 220, 220), 1)
    if row.valence == row.valence:  # not NaN
        x = centre[0] + int(round(float(row.valence) * side / 2))
        y = centre[1] - int(round(float(row.arousal) * side / 2))
        cv2.circle(canvas, (x, y), max(2, side // 10), (60, 220, 255), -1, cv2.LINE_AA)
    if side >= 48:  # the axes' names where there is room for them
        font = 0.35 * max(scale, 1.0)
        cv2.putText(canvas, "V", (left + side - 10, centre[1] + 12), cv2.FONT_HERSHEY_SIMPLEX, font, (220, 220, 220),
                    1, cv2.LINE_AA)
        cv2.putText(canvas, "A", (centre[0] + 3, top + 11), cv2.FONT_HERSHEY_SIMPLEX, font, (220, 220, 220), 1,
                    cv2.LINE_AA)


def write_annotated(source: str, table, target: str) -> int:
    """Write ``target`` (MP4) from ``source`` and its prediction table; returns the number of frames written. The
    file appears whole or not at all (written beside and moved into place)."""
    import av

    from utils.atomic import atomic_write

    by_frame = {frame: rows for frame, rows in table.groupby("frame", sort=False)}
    rate = _sound_rate(source)
    written = 0
    with atomic_write(target, "wb") as handle:
        container = av.open(handle, "w", format="mp4")
        try:
            video = sound = None
            for frame in read_frames(source):
                rows = by_frame.get(frame.index)
                image = draw_faces(frame.image, rows) if rows is not None else frame.image
                if image.shape[0] % 2 or image.shape[1] % 2:  # yuv420p needs even sides
                    image = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)), mode="edge")
                if video is None:
                    video = container.add_stream("libx264", rate=25, options={"preset": "veryfast", "crf": "20"})
                    video.width, video.height, video.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
                    video.codec_context.time_base = TIME_BASE
                    if rate:
                        sound = _Sound(container, source, rate)
                picture = av.VideoFrame.from_ndarray(image, format="rgb24")
                picture.pts, picture.time_base = int(round(frame.time / TIME_BASE)), TIME_BASE
                for packet in video.encode(picture):
                    container.mux(packet)
                written += 1
                if sound is not None:  # the sound up to this frame's end: the muxer interleaves as it goes
                    sound.send(frame.time + frame.duration)
            if video is not None:
                for packet in video.encode():
                    container.mux(packet)
            if sound is not None:
                sound.send(float("inf"))
                sound.flush()
        finally:
            container.close()
    return written


def _sound_rate(source: str) -> int | None:
    """The sample rate of the source's sound (None when it has none)."""
    import av

    with av.open(source) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        return int(stream.rate or stream.codec_context.sample_rate or 48000)


class _Sound:
    """The source's sound (mono at its own rate, sample 0 at frame 1: ``read_audio``) encoded as AAC, a stretch at a
    time."""

    def __init__(self, container, source: str, rate: int):
        self.container, self.rate = container, rate
        self.stream = container.add_stream("aac", rate=rate, layout="mono")
        self.chunks = read_audio(source, first_frame_time(source), rate)
        self.sent = 0  # samples encoded

    def send(self, until: float) -> None:
        """Encode the sound up to ``until`` seconds (all of it for infinity)."""
        import av

        while self.sent < until * self.rate:
            chunk = next(self.chunks, None)
            if chunk is None:
                return
            frame = av.AudioFrame.from_ndarray(np.asarray(chunk, np.float32)[None, :], format="flt", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self.sent, fractions.Fraction(1, self.rate)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.sent += len(chunk)

    def flush(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)


def annotated_name(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}_annotated.mp4")
