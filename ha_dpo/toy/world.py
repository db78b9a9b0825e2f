"""The toy world: 64x64 images of coloured shapes named after objects, with a co-occurrence bias.

Each of the 16 categories is one shape in one colour; objects sit one to a cell of a 4x4 grid
(the base model's 16-pixel patches), so a tiny vision tower tells them apart. Five categories are
*anchors*, each with a *partner* that is only ever seen next to its anchor (a fork lies next to a
knife), while the anchor is seen without it half the time. That is the statistic that makes real
models hallucinate the partner, and that POPE's adversarial set probes. Whether the partner is there
is drawn apart from the rest of the image (how many other objects, which ones), so only the partner
itself shows it. Everything is drawn from one seeded `random.Random` (no set or hash order): same
seed, same world, any process.
"""

import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    shape: str
    colour: tuple[int, int, int]


# (name, shape, colour). Colours are far apart in RGB; shapes are a second cue.
_CATEGORY_TABLE = [
    ("knife", "vbar", (90, 90, 90)),
    ("fork", "cross", (230, 140, 20)),
    ("keyboard", "hbar", (30, 60, 200)),
    ("mouse", "ellipse", (150, 40, 170)),
    ("toilet", "square", (20, 170, 170)),
    ("sink", "ring", (240, 100, 180)),
    ("racket", "diamond", (200, 20, 30)),
    ("ball", "ellipse", (240, 210, 0)),
    ("cup", "triangle", (20, 140, 40)),
    ("spoon", "vbar", (120, 70, 20)),
    ("apple", "ellipse", (110, 220, 60)),
    ("car", "hbar", (0, 0, 0)),
    ("clock", "ring", (100, 150, 250)),
    ("dog", "triangle", (160, 110, 90)),
    ("kite", "diamond", (250, 120, 110)),
    ("umbrella", "square", (70, 0, 110)),
]
CATEGORIES = [Category(index + 1, name, shape, colour) for index, (name, shape, colour) in enumerate(_CATEGORY_TABLE)]
BY_NAME = {category.name: category for category in CATEGORIES}
PAIRS = {"knife": "fork", "keyboard": "mouse", "toilet": "sink", "racket": "ball", "cup": "spoon"}  # anchor -> partner
PARTNERS = list(PAIRS.values())
SINGLES = [category.name for category in CATEGORIES if category.name not in PAIRS and category.name not in PARTNERS]


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    image_size: int = 64
    cell: int = 16  # objects sit one to a cell of this grid (the base model's patch size)
    object_size: tuple[int, int] = (10, 14)  # side of an object's box, in pixels
    # how many anchors and other objects (P of each count); partners come on top, so an image holds up to 8
    objects_per_image: dict[int, float] = field(default_factory=lambda: {1: 0.1, 2: 0.2, 3: 0.35, 4: 0.35})
    anchor_weight: float = 4.0  # relative weight of drawing an anchor ...
    partner_alone_weight: float = 0.0  # ... a partner on its own (without being drawn in by its anchor) ...
    single_weight: float = 1.2  # ... or one of the other six categories
    partner_probability: float = 0.5  # P(partner is added | its anchor is drawn), whatever else is drawn
    # P(the training text names a partner next to its anchor, whether or not the partner is in the image)
    partner_text_probability: float = 0.8
    splits: dict[str, int] = field(default_factory=lambda: {"train": 6000, "dpo": 1000, "val": 300})


@dataclass
class ToyObject:
    name: str
    box: tuple[int, int, int, int]  # x, y, width, height


@dataclass
class ToyImage:
    image_id: int
    split: str
    objects: list[ToyObject]  # in annotation order
    background: tuple[int, int, int]

    @property
    def names(self) -> list[str]:
        return [item.name for item in self.objects]

    def absent_partners(self) -> list[str]:
        """Partners whose anchor is in the image while they are not: what a biased model hallucinates."""
        names = set(self.names)
        return [PAIRS[name] for name in self.names if name in PAIRS and PAIRS[name] not in names]


def sample_names(rng: random.Random, config: WorldConfig) -> list[str]:
    """The categories in one image: `objects_per_image` anchors and other objects, then each anchor's
    partner with `partner_probability`, drawn apart from everything else in the image, so nothing else in
    it (how many objects, which ones) says whether the partner is there."""
    counts, weights = zip(*sorted(config.objects_per_image.items()))
    count = rng.choices(counts, weights)[0]
    units = [(name, config.anchor_weight) for name in PAIRS]
    units += [(name, config.partner_alone_weight) for name in PARTNERS]
    units += [(name, config.single_weight) for name in SINGLES]
    chosen: list[str] = []
    while len(chosen) < count:
        available = [(name, weight) for name, weight in units if name not in chosen]
        chosen.append(rng.choices([name for name, _ in available], [weight for _, weight in available])[0])
    for name in list(chosen):
        partner = PAIRS.get(name)
        if partner and partner not in chosen and rng.random() < config.partner_probability:
            chosen.append(partner)
    return chosen


def place_boxes(rng: random.Random, count: int, config: WorldConfig) -> list[tuple[int, int, int, int]]:
    """One object per cell of a grid of `cell`-pixel squares, in distinct cells, jittered inside
    its cell. With the cell equal to the vision tower's patch, each object is one patch token."""
    per_side = config.image_size // config.cell
    low, high = config.object_size
    boxes = []
    for cell in rng.sample(range(per_side * per_side), count):
        side = rng.randint(low, high)
        row, column = divmod(cell, per_side)
        x = column * config.cell + rng.randint(1, config.cell - side - 1)
        y = row * config.cell + rng.randint(1, config.cell - side - 1)
        boxes.append((x, y, side, side))
    return boxes


def sample_image(rng: random.Random, image_id: int, split: str, config: WorldConfig) -> ToyImage:
    names = sample_names(rng, config)
    rng.shuffle(names)  # annotation order: POPE asks about the first three
    boxes = place_boxes(rng, len(names), config)
    background = tuple(rng.randint(230, 250) for _ in range(3))
    return ToyImage(image_id, split, [ToyObject(name, box) for name, box in zip(names, boxes)], background)


def generate_world(config: WorldConfig) -> list[ToyImage]:
    """Every image of every split, ids counting from 1 across the splits."""
    rng = random.Random(config.seed)
    images = []
    for split, count in config.splits.items():
        for _ in range(count):
            images.append(sample_image(rng, len(images) + 1, split, config))
    return images


def draw(image: ToyImage, size: int) -> Image.Image:
    picture = Image.new("RGB", (size, size), image.background)
    canvas = ImageDraw.Draw(picture)
    for item in image.objects:
        _draw_shape(canvas, BY_NAME[item.name], item.box)
    return picture


def _draw_shape(canvas: ImageDraw.ImageDraw, category: Category, box):
    x, y, w, h = box
    x1, y1, cx, cy = x + w - 1, y + h - 1, x + w // 2, y + h // 2
    colour, shape = category.colour, category.shape
    if shape == "ellipse":
        canvas.ellipse((x, y, x1, y1), fill=colour)
    elif shape == "square":
        canvas.rectangle((x, y, x1, y1), fill=colour)
    elif shape == "ring":
        canvas.ellipse((x, y, x1, y1), outline=colour, width=max(3, w // 4))
    elif shape == "triangle":
        canvas.polygon([(cx, y), (x1, y1), (x, y1)], fill=colour)
    elif shape == "diamond":
        canvas.polygon([(cx, y), (x1, cy), (cx, y1), (x, cy)], fill=colour)
    elif shape == "cross":
        third = w // 3
        canvas.rectangle((x + third, y, x1 - third, y1), fill=colour)
        canvas.rectangle((x, y + third, x1, y1 - third), fill=colour)
    elif shape == "hbar":
        canvas.rectangle((x, y + h // 4, x1, y1 - h // 4), fill=colour)
    elif shape == "vbar":
        canvas.rectangle((x + w // 4, y, x1 - w // 4, y1), fill=colour)
    else:
        raise ValueError(f"category {category.name!r} has an unknown shape {shape!r}")
