"""Pictures for asset metadata: small PNGs the Dagster UI shows inline, drawn from plain numpy arrays.

The UI renders markdown metadata, so a picture travels as ``![alt](data:image/png;base64,...)``
(:func:`markdown`) and needs no file server. Each PNG stays under ``MAX_PNG_BYTES``: the event log keeps
every materialization's metadata, so pictures are small figures at a low dpi, never full-size plots.

Drawing stays out of the hot path: matplotlib is imported inside the functions (loading the definitions
never pays for it), figures are drawn on an explicit Agg canvas (no display, no pyplot global state,
safe beside the UI's own threads), and grids are one mosaic image instead of an axes per example.
Samples are the first rows given, so the same data draws the same picture.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PNG_BYTES = 150_000
"""The issue's bound per picture; :func:`_png` lowers the dpi until a picture fits."""
DPI = 80
GRID_COLUMNS = 8
SAMPLE_COUNT = 32
"""Examples in a sample grid (its first rows: deterministic)."""
CELL_TEXT_CLASSES = 20
"""Up to this many classes, the confusion matrix prints its counts in the cells (and bars theirs)."""
NAMED_TICKS = 50
"""Up to this many classes, ticks carry class names; beyond, every tenth class index."""


def markdown(png: bytes, alt: str) -> str:
    """A markdown image of ``png`` as a data URI; ``alt`` says what it shows (brackets and line breaks,
    which would end the alt text, become spaces)."""
    clean = " ".join(alt.replace("[", " ").replace("]", " ").split())
    return f"![{clean}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def sample_grid(images: np.ndarray, labels: np.ndarray | None, class_names: Sequence[str]) -> bytes:
    """The first ``SAMPLE_COUNT`` images, each captioned with its class name (or its row when
    ``labels`` is None: an images file whose labels are not stored yet)."""
    shown = np.asarray(images[:SAMPLE_COUNT])
    if labels is None:
        captions = [f"row {i}" for i in range(len(shown))]
    else:
        captions = [_name(class_names, label) for label in np.asarray(labels[: len(shown)])]
    return _grid(shown, captions)


def confident_mistakes(
    images: np.ndarray,
    true: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    class_names: Sequence[str],
) -> bytes:
    """Misclassified images (most confident first, as given), captioned true → predicted (confidence)."""
    captions = [
        f"{_name(class_names, t)}\n→ {_name(class_names, p)} {c:.0%}"
        for t, p, c in zip(true, predicted, confidence, strict=True)
    ]
    return _grid(np.asarray(images), captions, caption_lines=2)


def label_histogram(counts: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Examples per class as bars, each with its count."""
    width, names = max(4.0, 0.45 * len(counts) + 1.5), _slant_inches(len(counts), class_names)
    figure = _figure(width, 2.4 + names)
    axes = _axes(figure, left=0.55, bottom=0.3 + names, right=0.1, top=0.15)
    positions = np.arange(len(counts))
    bars = axes.bar(positions, counts, color="#4878a8")
    if len(counts) <= CELL_TEXT_CLASSES:
        axes.bar_label(bars, fontsize=6)
    _class_ticks(axes, "x", positions, class_names)
    axes.set_ylabel("examples", fontsize=7)
    axes.tick_params(labelsize=6)
    axes.margins(y=0.12)
    return _png(figure)


def training_curves(history: Mapping[str, Sequence[float]]) -> bytes:
    """Loss and accuracy per epoch, train beside validation (Keras ``History.history`` keys)."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure(7.0, 2.6)
    figure.subplots_adjust(left=0.07, right=0.99, bottom=0.16, top=0.9, wspace=0.2)
    for column, metric in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, column + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            values = history.get(key, [])
            axes.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        axes.set_title(metric, fontsize=8)
        axes.set_xlabel("epoch", fontsize=7, labelpad=1)
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=6)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=6)
    return _png(figure)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str]) -> bytes:
    """Counts by true class (rows) and predicted class (columns); the diagonal is what was right."""
    size = len(matrix)
    side = min(8.0, max(3.6, 0.36 * size))
    left, bottom = 0.4 + _label_inches(size, class_names), 0.4 + _slant_inches(size, class_names)
    figure = _figure(side + left + 0.1, side + bottom + 0.1)
    axes = _axes(figure, left=left, bottom=bottom, right=0.1, top=0.1)
    axes.imshow(matrix, cmap="Blues", interpolation="nearest")
    if size <= CELL_TEXT_CLASSES:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            color = "white" if count > threshold else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=6, color=color)
    positions = np.arange(size)
    _class_ticks(axes, "x", positions, class_names)
    _class_ticks(axes, "y", positions, class_names)
    axes.set_xlabel("predicted", fontsize=7)
    axes.set_ylabel("true", fontsize=7)
    axes.tick_params(labelsize=6)
    return _png(figure)


def _grid(images: np.ndarray, captions: Sequence[str], caption_lines: int = 1) -> bytes:
    """Images tiled into one mosaic (one ``imshow``, fast at any count), a caption under each."""
    count = len(images)
    height, width = images.shape[1:3] if images.ndim == 3 else (28, 28)
    columns = min(GRID_COLUMNS, max(count, 1))
    rows = max(1, -(-count // columns))
    gap, band = 4, 9 * caption_lines  # pixels between tiles and for each caption, in image units
    pitch_x, pitch_y = width + gap, height + band + gap
    mosaic = np.full((rows * pitch_y, columns * pitch_x), 255, np.uint8)
    figure = _figure(columns * 0.95, rows * (0.95 + 0.22 * caption_lines))
    axes = figure.add_axes((0, 0, 1, 1))
    for number, (image, caption) in enumerate(zip(images, captions, strict=True)):
        top, left = number // columns * pitch_y, number % columns * pitch_x
        mosaic[top : top + height, left : left + width] = 255 - np.asarray(image, np.uint8)
        axes.text(left + width / 2, top + height + 1, caption, ha="center", va="top", fontsize=6)
    if not count:
        axes.text(mosaic.shape[1] / 2, mosaic.shape[0] / 2, "none", ha="center", va="center", fontsize=7)
    axes.imshow(mosaic, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes.set_axis_off()
    return _png(figure)


def _name(class_names: Sequence[str], label) -> str:
    index = int(label)
    return class_names[index] if 0 <= index < len(class_names) else f"label {index}"


def _class_ticks(axes, axis: str, positions: np.ndarray, class_names: Sequence[str]) -> None:
    """Class names as tick labels on ``axis`` ("x" slanted when they are words); beyond
    ``NAMED_TICKS`` classes, every tenth index instead (names would overlap)."""
    set_ticks = axes.set_xticks if axis == "x" else axes.set_yticks
    if len(positions) > NAMED_TICKS:
        set_ticks(positions[::10])
        return
    names = [_name(class_names, p) for p in positions]
    if axis == "x" and _are_words(names):
        set_ticks(positions, names, rotation=45, ha="right", rotation_mode="anchor")
    else:
        set_ticks(positions, names)


def _are_words(names: Sequence[str]) -> bool:
    return max((len(n) for n in names), default=0) > 2


def _label_inches(count: int, class_names: Sequence[str]) -> float:
    """Width of the widest tick label at 6 pt (about 0.05 inch a character): figure margins are
    sized from the names instead of measured by a layout engine, which would double the drawing time."""
    if count > NAMED_TICKS:
        return 0.15
    return 0.05 * max((len(_name(class_names, i)) for i in range(count)), default=1)


def _slant_inches(count: int, class_names: Sequence[str]) -> float:
    """Height of the x tick labels: slanted 45° names (see :func:`_class_ticks`), or one line."""
    if count > NAMED_TICKS or not _are_words([_name(class_names, i) for i in range(count)]):
        return 0.1
    return 0.71 * _label_inches(count, class_names)


def _axes(figure: Figure, left: float, bottom: float, right: float, top: float):
    """Axes filling ``figure`` but for margins given in inches."""
    width, height = figure.get_size_inches()
    return figure.add_axes(
        (left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height)
    )


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


def _png(figure: Figure) -> bytes:
    """The figure as PNG on an Agg canvas (the display backend never matters), at ``DPI`` or lower
    until it fits ``MAX_PNG_BYTES``. No Software tag: the same figure gives the same bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    dpi = DPI
    while True:
        sink = io.BytesIO()
        figure.savefig(sink, format="png", dpi=dpi, metadata={"Software": None})
        if sink.tell() <= MAX_PNG_BYTES or dpi <= 20:
            return sink.getvalue()
        dpi = int(dpi * 0.7)
