"""Media: raw videos and their sound in, the prepared Aff-Wild2 layout out.

``prepared`` names the files of a prepared output folder and reads and writes them; ``video`` decodes a video as a
stream of frames with their times and its sound at 16 kHz; ``faces`` finds, tracks and aligns the faces of a frame
stream. ``main_prepare.py`` (``engine.tasks.prepare``) writes the layout with them, ``predict.py`` calls the same
stream API on a user's videos. ``audio`` turns a recording into per-frame features (a log-mel spectrogram, and the
window of a feature sequence around each frame's time) for the temporal stage's ``--audio``.
"""
