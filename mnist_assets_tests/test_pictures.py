"""The metadata pictures: real PNGs from matplotlib's Agg canvas, decoded back with Pillow."""

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_assets.assets import pictures
from mnist_assets.catalog import load_catalog
from mnist_assets_tests.support import REPO

FASHION_NAMES = load_catalog()["fashion_mnist"].class_names


def decoded(png: bytes) -> Image.Image:
    """The PNG decoded (Pillow refuses anything that is not a whole, valid image)."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) <= pictures.MAX_PNG_BYTES
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def ink(png: bytes) -> float:
    """Share of dark pixels: how much was drawn."""
    gray = np.asarray(decoded(png).convert("L"))
    return float((gray < 128).mean())


@pytest.fixture(scope="module")
def digits(t10k_arrays):
    images, labels = t10k_arrays
    return images[:1000], labels[:1000]


def test_sample_grid_is_a_small_png_of_eight_columns(digits):
    images, labels = digits
    image = decoded(pictures.sample_grid(images, labels, FASHION_NAMES))
    columns, rows = pictures.GRID_COLUMNS, pictures.SAMPLE_COUNT // pictures.GRID_COLUMNS
    assert image.size == (round(columns * 0.95 * pictures.DPI), round(rows * 1.17 * pictures.DPI))


def test_sample_grid_draws_the_images_dark_on_white(digits):
    images, labels = digits
    blank = pictures.sample_grid(np.zeros_like(images[:32]), labels, FASHION_NAMES)
    full = pictures.sample_grid(np.full_like(images[:32], 255), labels, FASHION_NAMES)
    real = pictures.sample_grid(images, labels, FASHION_NAMES)
    assert ink(blank) < 0.05 < ink(real) < ink(full)


def test_sample_grid_is_deterministic_and_shows_the_first_rows(digits):
    images, labels = digits
    first = pictures.sample_grid(images, labels, FASHION_NAMES)
    assert pictures.sample_grid(images, labels, FASHION_NAMES) == first
    assert pictures.sample_grid(images[: pictures.SAMPLE_COUNT], labels, FASHION_NAMES) == first
    assert pictures.sample_grid(images[1:], labels[1:], FASHION_NAMES) != first


def test_sample_grid_without_labels_captions_rows(digits):
    images, labels = digits
    assert pictures.sample_grid(images, None, FASHION_NAMES) != pictures.sample_grid(
        images, labels, FASHION_NAMES
    )


def test_label_histogram_makes_room_for_its_classes():
    digits = [str(d) for d in range(10)]
    even = pictures.label_histogram(np.full(10, 100), digits)
    assert pictures.label_histogram(np.arange(10) * 100, digits) != even
    words = decoded(pictures.label_histogram(np.full(10, 100), FASHION_NAMES))
    assert words.size[1] > decoded(even).size[1]  # slanted names need a taller figure than digits
    wide = decoded(pictures.label_histogram(np.ones(47, np.int64), [f"c{i}" for i in range(47)]))
    assert wide.size[0] > words.size[0]  # more classes, a wider figure


def test_training_curves_draw_every_series():
    history = {
        "loss": [1.0, 0.5, 0.3],
        "accuracy": [0.6, 0.8, 0.9],
        "val_loss": [1.1, 0.6, 0.4],
        "val_accuracy": [0.55, 0.75, 0.85],
    }
    curves = pictures.training_curves(history)
    assert decoded(curves).size == (round(7.0 * pictures.DPI), round(2.6 * pictures.DPI))
    assert curves != pictures.training_curves({**history, "val_loss": [0.2, 0.2, 0.2]})


def test_confusion_matrix_scales_with_the_class_count():
    rng = np.random.default_rng(0)
    ten = decoded(pictures.confusion_matrix(rng.integers(0, 900, (10, 10)), FASHION_NAMES))
    many = decoded(pictures.confusion_matrix(rng.integers(0, 900, (62, 62)), [f"c{i}" for i in range(62)]))
    assert many.size[0] > ten.size[0]


def test_confident_mistakes_caption_each_image_and_allow_none(digits):
    images, labels = digits
    mistakes = pictures.confident_mistakes(
        images[:16], labels[:16], (labels[:16] + 1) % 10, np.linspace(0.99, 0.6, 16), FASHION_NAMES
    )
    assert decoded(mistakes).size[1] == round(2 * (0.95 + 0.44) * pictures.DPI)
    none = pictures.confident_mistakes(images[:0], labels[:0], labels[:0], np.zeros(0), FASHION_NAMES)
    assert decoded(none).size[0] == round(0.95 * pictures.DPI)


def test_a_picture_too_large_is_drawn_at_a_lower_dpi(monkeypatch, digits):
    images, labels = digits
    full = pictures.sample_grid(images, labels, FASHION_NAMES)
    full_width = decoded(full).size[0]
    monkeypatch.setattr(pictures, "MAX_PNG_BYTES", len(full) // 2)
    smaller = pictures.sample_grid(images, labels, FASHION_NAMES)
    assert decoded(smaller).size[0] < full_width  # decoded() also checks the lowered bound


def test_markdown_embeds_the_png_as_a_data_uri_with_clean_alt_text(digits):
    png = pictures.label_histogram(np.arange(10), FASHION_NAMES)
    text = pictures.markdown(png, "train [split]:\nexamples per class")
    match = re.fullmatch(r"!\[([^\]\n]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert match, text[:80]
    assert match.group(1) == "train split : examples per class"
    assert base64.b64decode(match.group(2)) == png


def test_loading_the_definitions_imports_no_matplotlib():
    code = "import sys, mnist_assets; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_every_asset_and_check_says_what_it_is():
    from mnist_assets import defs

    graph, catalog = defs.resolve_asset_graph(), load_catalog()
    for key in graph.get_all_asset_keys():
        description = graph.get(key).description or ""
        assert description.startswith(catalog[key.path[0]].title), key
        if not graph.get(key).is_observable:  # a source stores nothing: the others say where they are
            assert "MNIST_ASSETS_STORAGE" in description, key
    checks = [graph.get_check_spec(k) for k in graph.asset_check_keys]
    assert len(checks) == 2 * 5
    assert all(len(check.description or "") > 40 for check in checks), checks
