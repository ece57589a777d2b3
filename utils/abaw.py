"""The ABAW facts every part of the code shares: label codes, class and AU orders, the MTL output layout.

Defined here once (ABAW4.md, "Label codes") and imported by the readers, losses, metrics, models, writers and
the synthetic generator.
"""

from __future__ import annotations

import numpy as np

EXPR_NAMES = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AU_NUMBERS = (1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26)  # the 12 ABAW AUs, in annotation-file order
AU_NAMES = tuple(f"AU{number}" for number in AU_NUMBERS)
LSD_CLASSES = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")

NUM_EXPR = len(EXPR_NAMES)
NUM_AU = len(AU_NAMES)
NUM_LSD_CLASSES = len(LSD_CLASSES)

# Missing-label codes of the annotation files.
VA_MISSING = -5
EXPR_MISSING = -1
AU_MISSING = -1

# An MTL label row: valence, arousal, expression, then the 12 AUs.
LABEL_VA = slice(0, 2)
LABEL_EXPR = 2
LABEL_AU = slice(3, 3 + NUM_AU)
LABEL_COLUMNS = 3 + NUM_AU

# An MTL model output row (EMMA): valence and arousal, 8 expression logits, 12 AU logits.
OUT_VA = slice(0, 2)
OUT_EXPR = slice(2, 2 + NUM_EXPR)
OUT_AU = slice(2 + NUM_EXPR, 2 + NUM_EXPR + NUM_AU)
OUTPUT_WIDTH = 2 + NUM_EXPR + NUM_AU

DEFAULT_AU_THRESHOLD = 0.5

# Candidate window lengths (frames) of temporal smoothing chosen on validation; 0 is "no smoothing".
SMOOTHING_WINDOWS = (0, 3, 5, 9, 15, 25, 45)


def au_probabilities(outputs: np.ndarray) -> np.ndarray:
    """Sigmoid of the AU logits of MTL output rows, in float64."""
    return 1.0 / (1.0 + np.exp(-np.asarray(outputs)[:, OUT_AU].astype(np.float64)))
