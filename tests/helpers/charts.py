"""What the PNG charts the commands write must show: their size in pixels, and in each panel the bars
or the curve drawn in matplotlib's colours (a blank or half-drawn figure fails)."""

import numpy as np
from PIL import Image

# matplotlib's first default colours: the first run's bars or a curve (tab:blue), the second run's bars
BLUE = (31, 119, 180)
ORANGE = (255, 127, 14)


def chart_pixels(path, size: tuple[int, int]) -> np.ndarray:
    """The RGB pixels of the PNG at `path`, which must be `size` (width, height) pixels and not blank."""
    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is a {image.format}, not a PNG"
        assert image.size == size, f"{path} is {image.size[0]} x {image.size[1]} pixels, not {size[0]} x {size[1]}"
        pixels = np.asarray(image.convert("RGB")).astype(int)
    distinct = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert distinct > 20, f"{path} has {distinct} colours: a blank frame, not a chart"
    return pixels


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> np.ndarray:
    return np.abs(pixels - np.array(colour)).max(-1) <= tolerance


def panels(pixels: np.ndarray, count: int) -> list[np.ndarray]:
    """The figure cut into `count` side-by-side panels of equal width."""
    width = pixels.shape[1] // count
    return [pixels[:, index * width : (index + 1) * width] for index in range(count)]


def bar_heights(panel: np.ndarray, colour: tuple[int, int, int], top: int = 0) -> list[int]:
    """The heights in pixels of the bars of `colour` in `panel`, left to right (rows above `top`, where
    a legend lies, are left out)."""
    columns = colour_mask(panel[top:], colour).sum(0)
    heights, current = [], 0
    for count in columns:
        if count:
            current = max(current, int(count))
        elif current:
            heights.append(current)
            current = 0
    if current:
        heights.append(current)
    return [height for height in heights if height > 2]  # a bar, not a stray antialiased pixel


def assert_bars_show(panel: np.ndarray, colour, values, top: int) -> None:
    """`panel` holds one bar of `colour` per value, their heights in proportion to the values (one axis from 0)."""
    heights = bar_heights(panel, colour, top)
    assert heights, f"no bars of {colour}"
    pixels_per_unit = max(heights) / max(values)
    visible = [value for value in values if value * pixels_per_unit > 2]  # a 0 is a bar of no height
    assert len(heights) == len(visible), f"{len(heights)} bars of {colour} for the values {values}"
    np.testing.assert_allclose(np.array(heights) / pixels_per_unit, visible, atol=0.02 * max(values))


def assert_pope_chart(path, runs):
    """pope_report's chart: 1200 x 480 pixels (10 x 4 inches at 120 dpi), accuracy on the left and F1 on
    the right, in each a bar per set for every run (colour -> metrics), its height the metric."""
    accuracy, f1 = panels(chart_pixels(path, (1200, 480)), 2)
    for colour, metrics in runs.items():
        for panel, name in ((accuracy, "accuracy"), (f1, "f1")):
            values = [100 * by_set[name] for by_set in metrics.values()]
            assert_bars_show(panel, colour, values, top=60)  # the legend lies above the axes


def assert_curve_panels(path, count: int) -> None:
    """A training-curves PNG: `count` panels of 480 x 384 pixels (4 x 3.2 inches at 120 dpi), a curve in each."""
    pixels = chart_pixels(path, (480 * count, 384))
    for index, panel in enumerate(panels(pixels, count)):
        drawn = int(colour_mask(panel, BLUE).sum())
        assert drawn >= 20, f"panel {index} of {path} has {drawn} pixels of its curve"
