"""The timeline of a video's predictions (``OUT/<video>_timeline.png`` of ``predict.py``): per track, valence and
arousal over time, the expression as a coloured band and the AU probabilities as a heat map, on one time axis.

The expression colours are defined here once; the annotated video (``engine.tasks.predict.annotate``) draws with the
same ones.
"""

from __future__ import annotations

import numpy as np

from utils import abaw

# One colour per expression (abaw.EXPR_NAMES order), as RGB in [0, 1]: neutral grey, the negative ones warm or dark,
# happiness green, surprise yellow.
EXPRESSION_COLOURS = ((0.62, 0.62, 0.62), (0.84, 0.15, 0.16), (0.55, 0.34, 0.29), (0.58, 0.40, 0.74),
                      (0.17, 0.63, 0.17), (0.12, 0.47, 0.71), (0.99, 0.75, 0.10), (0.09, 0.75, 0.81))
MAX_COLUMNS = 3000  # frames drawn per track at most (a long video is drawn from evenly spaced frames)


def track_series(table, track: int, times: np.ndarray) -> dict:
    """A track's values at every frame time of the video (NaN, or -1 for the expression, where it is not seen)."""
    from engine.tasks.predict import AU_COLUMNS

    rows = table[table["track"] == track]
    where = np.searchsorted(times, rows["time"].to_numpy())
    series = {"valence": np.full(len(times), np.nan), "arousal": np.full(len(times), np.nan),
              "expression": np.full(len(times), -1), "aus": np.full((len(AU_COLUMNS), len(times)), np.nan)}
    series["valence"][where] = rows["valence"].to_numpy(np.float64)
    series["arousal"][where] = rows["arousal"].to_numpy(np.float64)
    series["expression"][where] = [abaw.EXPR_NAMES.index(name) for name in rows["expression"]]
    series["aus"][:, where] = rows[AU_COLUMNS].to_numpy(np.float64).T
    return series


def timeline_figure(table, title: str = ""):
    """The figure of a video's prediction table (``Predictor.video``'s); one block of three panels per track."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from engine.tasks.predict import AU_COLUMNS

    times = np.unique(table["time"].to_numpy(np.float64))
    tracks = sorted(int(t) for t in table["track"].dropna().unique())
    step = max(1, int(np.ceil(len(times) / MAX_COLUMNS)))
    shown = np.arange(0, len(times), step)
    edges = _edges(times[shown])
    blocks = max(1, len(tracks))
    figure = plt.figure(figsize=(12, 0.9 + 4.6 * blocks))
    grid = figure.add_gridspec(4 * blocks, 2, height_ratios=[2.2, 0.45, 2.4, 0.75] * blocks, width_ratios=[60, 1],
                               hspace=0.15, wspace=0.02)
    expression_map = ListedColormap(EXPRESSION_COLOURS)
    expression_map = expression_map.with_extremes(bad=(1, 1, 1, 0))
    axis = None
    for block, track in enumerate(tracks):
        series = track_series(table, track, times)
        top = 4 * block
        va = figure.add_subplot(grid[top, 0], sharex=axis)
        axis = axis or va
        va.plot(times, series["valence"], color="#1f77b4", lw=1.4, label="valence")
        va.plot(times, series["arousal"], color="#d62728", lw=1.4, label="arousal")
        va.axhline(0, color="0.6", lw=0.8)
        va.set_ylim(-1.05, 1.05)
        va.set_yticks([-1, 0, 1])
        va.set_ylabel("VA")
        seen = np.isfinite(series["valence"]).mean()
        va.set_title(f"track {track}: seen in {seen:.0%} of the frames", loc="left", fontsize=10)
        va.legend(loc="upper right", fontsize=8, ncol=2, frameon=False)
        va.tick_params(labelbottom=False)

        band = figure.add_subplot(grid[top + 1, 0], sharex=axis)
        classes = np.ma.masked_less(series["expression"][shown][None, :].astype(float), 0)
        band.pcolormesh(edges, [0, 1], classes, cmap=expression_map, vmin=-0.5, vmax=len(abaw.EXPR_NAMES) - 0.5,
                        shading="flat")
        band.set_yticks([0.5], ["expr."])
        band.tick_params(labelbottom=False, left=False)

        heat = figure.add_subplot(grid[top + 2, 0], sharex=axis)
        mesh = heat.pcolormesh(edges, np.arange(len(AU_COLUMNS) + 1), series["aus"][:, shown], cmap="magma",
                               vmin=0, vmax=1, shading="flat")
        heat.set_yticks(np.arange(len(AU_COLUMNS)) + 0.5, AU_COLUMNS, fontsize=7)
        heat.invert_yaxis()
        heat.set_xlabel("time (s)")
        bar = figure.colorbar(mesh, cax=figure.add_subplot(grid[top + 2, 1]))
        bar.set_label("AU prob.", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if not tracks:
        empty = figure.add_subplot(grid[0, 0])
        empty.text(0.5, 0.5, "no face was found in this video", ha="center", va="center")
        empty.set_axis_off()
    elif axis is not None:
        axis.set_xlim(edges[0], edges[-1])
    handles = [Patch(color=colour, label=name) for name, colour in zip(abaw.EXPR_NAMES, EXPRESSION_COLOURS)]
    figure.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=8, frameon=False,
                  bbox_to_anchor=(0.5, 1.0 - 0.25 / figure.get_figheight()))
    if title:
        figure.suptitle(title, y=1.0 + 0.1 / figure.get_figheight(), fontsize=12)
    return figure


def _edges(times: np.ndarray) -> np.ndarray:
    """Cell edges around each frame time (a frame lasts until the next one; the last as long as the one before)."""
    if len(times) == 1:
        return np.array([times[0], times[0] + 0.04])
    last = times[-1] + (times[-1] - times[-2])
    return np.concatenate([times, [last]])


def save_timeline(table, path: str, title: str = "") -> None:
    """Draw and write the timeline PNG atomically."""
    from matplotlib import pyplot as plt

    from utils.atomic import atomic_write

    figure = timeline_figure(table, title)
    try:
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format="png", dpi=90, bbox_inches="tight")
    finally:
        plt.close(figure)
