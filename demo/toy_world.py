"""What the page says when it runs on the toy world: which shape stands for which object, why the
base model says "Yes" to an absent partner, and which models are the toy's.

The legend is drawn by the toy world's own drawing code from its own category table, so it shows
exactly what the model was trained on.
"""

import base64
import html
import io
import os

from ha_dpo.toy import DEFAULT_CHECKPOINT
from ha_dpo.toy.world import CATEGORIES, PAIRS, ToyImage, ToyObject, WorldConfig, draw

SWATCH = 40  # pixels: a legend swatch, the shape drawn large
SWATCH_BACKGROUND = (240, 240, 240)
SHAPE_WORDS = {"vbar": "vertical bar", "hbar": "horizontal bar", "ellipse": "disc", "ring": "ring", "cross": "cross"}
PARTNER_OF = {partner: anchor for anchor, partner in PAIRS.items()}
TOY_EXAMPLES_LABEL = (
    "The toy world: held-out images, each showing an anchor without its partner, asked about the partner"
)
OUTSIDE_LABEL = (
    f"Outside the toy world: real photos. The toy model has only seen its {len(CATEGORIES)} shapes, so both "
    "columns answer with toy objects"
)

# Display only: the 64x64 toy pictures fill the image box, scaled up with nearest-neighbour so each
# pixel stays a crisp square. The model still gets the file as it is.
UPSCALED_CLASS = "upscaled-pixels"
PAGE_CSS = f".{UPSCALED_CLASS} img {{ width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }}"


def is_toy_model(*paths: str | None) -> bool:
    """Whether any of these model folders is the toy world's base model (the page then explains the world)."""
    toy = os.path.realpath(DEFAULT_CHECKPOINT)
    return any(path is not None and os.path.realpath(path) == toy for path in paths)


def swatch_png(category) -> bytes:
    """One category's shape in its colour, drawn as the world draws it, as PNG bytes."""
    margin = SWATCH // 10
    picture = draw(
        ToyImage(0, "legend", [ToyObject(category.name, (margin, margin, SWATCH - 2 * margin, SWATCH - 2 * margin))],
                 SWATCH_BACKGROUND),
        SWATCH,
    )  # fmt: skip
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def caption(name: str) -> str:
    if name in PAIRS:
        return f"{name} (its partner: {PAIRS[name]})"
    if name in PARTNER_OF:
        return f"{name} (mostly seen with {PARTNER_OF[name]})"
    return name


def legend_html() -> str:
    """Every category: its swatch and its name (alt text: name, shape), anchors and partners marked."""
    cells = []
    for category in CATEGORIES:
        data = base64.b64encode(swatch_png(category)).decode("ascii")
        shape = SHAPE_WORDS.get(category.shape, category.shape)
        cells.append(
            '<figure style="margin:0;text-align:center">'
            f'<img src="data:image/png;base64,{data}" width="{SWATCH}" height="{SWATCH}" '
            f'alt="{html.escape(category.name)}: a {html.escape(shape)}" style="image-rendering:pixelated">'
            f'<figcaption style="font-size:0.85em">{html.escape(caption(category.name))}</figcaption></figure>'
        )
    return (
        '<div id="toy-legend-grid" style="display:grid;grid-template-columns:repeat(auto-fill,minmax(96px,1fr));'
        f'gap:8px">{"".join(cells)}</div>'
    )


def introduction() -> str:
    """Markdown for the page's header: what the toy world is and what to look for."""
    pairs = ", ".join(f"{anchor} → {partner}" for anchor, partner in PAIRS.items())
    size = WorldConfig().image_size
    return (
        f"**The toy world**: {size}x{size} pictures of coloured shapes, each standing for an object "
        "(the legend below the image says which). The toy base model learned from captions that name a partner "
        f"next to its anchor even when the partner is not there ({pairs}), so asked about an absent partner it "
        'says "Yes". The block, trained with DPO on the toy HA-DPO pairs (`python -m ha_dpo.toy.quickstart`), '
        'checks the image: it mostly says "No" to the absent partner and still "Yes" to what is there. '
        f"Both models know only these {len(CATEGORIES)} shapes: on a photo they answer with toy objects."
    )
