"""The ABAW tracks, one module each: where a track's files are and how to read them, its labels and missing codes,
its metric, its submission writer (which re-reads what it wrote) and its synthetic version (``base.Track``).

| track | module | what is predicted |
|---|---|---|
| mtl | ``mtl`` | ABAW4 MTL: valence, arousal, expression, 12 AUs per frame |
| va, expr, au | ``single`` | the per-video single-task tracks of ABAW2-8 |
| lsd | ``lsd`` | ABAW4 LSD: six expressions per image |
| emi | ``emi`` | Emotional Mimicry Intensity: 6 intensities per video |
| ah, ah_frame | ``ah`` | Ambivalence/Hesitancy per video (ABAW10/11) and per frame (ABAW8) |
| ce | ``ce`` | Compound Expression: 7 classes per frame |

The stages ask a track for these facts (``get_track(name)``) and never branch on its name; a new track adds a module
and a line in ``MODULES``.
"""

from __future__ import annotations

import importlib

# name -> (module of datasets.tracks, its attribute holding the track); modules are imported when first asked for
MODULES = {"mtl": ("mtl", "TRACK"), "va": ("single", "VA"), "expr": ("single", "EXPR"), "au": ("single", "AU"),
           "lsd": ("lsd", "TRACK"), "emi": ("emi", "TRACK"), "ah": ("ah", "TRACK"), "ah_frame": ("ah", "FRAME_TRACK"),
           "ce": ("ce", "TRACK")}


def get_track(name: str):
    if name not in MODULES:
        raise ValueError(f"unknown track {name!r}; expected one of {', '.join(MODULES)}")
    module, attribute = MODULES[name]
    return getattr(importlib.import_module(f"datasets.tracks.{module}"), attribute)


def video_track_names() -> list[str]:
    """The tracks the video-level stage reads (those with a reader of whole videos)."""
    return [name for name in MODULES if hasattr(get_track(name), "read_split")]


def video_track(name: str):
    track = get_track(name)
    if not hasattr(track, "read_split"):
        raise ValueError(f"--track {name} is not a track of whole videos; expected one of "
                         f"{', '.join(video_track_names())}")
    return track
