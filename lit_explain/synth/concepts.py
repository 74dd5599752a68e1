"""The concepts of the synthetic world: what exists, how each concept looks in pixels, and its label number.

The world is built so that every concept has an exact, locally measurable pixel signature (that is what
lets :mod:`lit_explain.synth.planted` build exact detectors, and a CNN learn them):

* **color** (pixel, object pixels only): an object's palette colour. Palette colours are fully saturated
  (one channel is 1, one is 0) and differ in HSV *hue* by at least 30 degrees. Parts and materials change
  only brightness and saturation, never hue, so the colour label of an object covers its parts too.
  Background pixels carry no colour label (backgrounds are low-chroma, see ``SCENES``).
* **object** (pixel): the object's shape.
* **part** (pixel): ``rim`` = the object's pixels within ``RIM_WIDTH`` of its outline, rendered at
  ``RIM_SHADE`` x brightness (dark); ``cap`` = the top ``CAP_FRACTION`` of the object's height, mixed
  ``CAP_WHITE`` of the way to white (desaturated, same hue). A pixel can be both (the top of the outline),
  which is why an image can have two part planes.
* **material** (pixel, optional category): a brightness pattern inside the object (metal: smooth diagonal
  gradient; wood: fine horizontal grain; plastic: flat). Objects without a material have no label there.
* **scene** (image-level): the background type, a low-chroma base colour with a low-frequency pattern.
* **texture** (image-level): a high-frequency pattern over the whole background (the scene's surface): its
  dark phase subtracts ``TEXTURE_DEPTH`` from every channel, so it is equally visible on dark scenes. Images with a plain background have no texture label. As in Broden (DTD), the label applies to
  the whole image.

Label numbers are assigned in :func:`world_concepts` order starting at 1 (0 = unlabeled, as in Broden).
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

#: Object palette: name -> RGB in [0, 1]; saturated, hue spacing >= 30 degrees.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "orange": (1.0, 0.5, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "blue": (0.0, 0.3, 1.0),
    "purple": (0.6, 0.0, 1.0),
    "pink": (1.0, 0.0, 0.6),
}

#: Object shapes (the ``object`` category).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring", "cross", "diamond")

#: Object parts (the ``part`` category).
PARTS: tuple[str, ...] = ("rim", "cap")

#: Object materials (the optional ``material`` category).
MATERIALS: tuple[str, ...] = ("metal", "wood", "plastic")

#: Scenes: name -> background base RGB. Low chroma (max - min <= 0.15; objects have >= 0.25), so a background
#: pixel is never mistaken for an object pixel.
SCENES: dict[str, tuple[float, float, float]] = {
    "sky": (0.70, 0.77, 0.85),
    "grass": (0.48, 0.56, 0.43),
    "water": (0.38, 0.45, 0.53),
    "indoor": (0.58, 0.50, 0.44),
    "desert": (0.86, 0.82, 0.71),
    "night": (0.17, 0.17, 0.24),
}

#: Background textures (image-level ``texture`` category).
TEXTURES: tuple[str, ...] = ("striped", "dotted", "chequered", "grid")

#: Category order of label numbers and of ``category.csv``.
CATEGORIES: tuple[str, ...] = ("color", "object", "part", "material", "scene", "texture")

#: Categories annotated per image (a number in index.csv) instead of per pixel (a PNG).
IMAGE_LEVEL_CATEGORIES: tuple[str, ...] = ("scene", "texture")

# Rendering constants (normalised image units: the image is the unit square).
RIM_WIDTH = 0.06  #: rim band width (3.8 px at 64 px, 1.9 mask px at 32)
RIM_SHADE = 0.5  #: rim brightness factor
CAP_FRACTION = 0.4  #: top fraction of the object's height that is the cap
CAP_WHITE = 0.35  #: cap colour = (1 - CAP_WHITE) * colour + CAP_WHITE (same hue, saturation 0.65)
TEXTURE_PERIOD = 0.125  #: texture period (8 px at 64 px)
TEXTURE_DEPTH = 0.12  #: the dark phase of a texture is this much darker on every channel (hue and chroma kept)
BRIGHTNESS_RANGE = (0.9, 1.0)  #: per-object brightness jitter


@dataclass(frozen=True)
class Concept:
    """One world concept.

    Args:
        number: global label id (Broden ``label.csv`` number), >= 1.
        name: unique concept name.
        category: one of :data:`CATEGORIES`.
        image_level: True for scene/texture (labelled per image).
        semantics: what the label means in pixels, for humans and for ``world.json``.
        rgb: the palette/base colour for colours and scenes, else None.
    """

    number: int
    name: str
    category: str
    image_level: bool
    semantics: str
    rgb: tuple[float, float, float] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def hue_degrees(rgb: tuple[float, float, float]) -> float:
    """HSV hue of an RGB triple in degrees [0, 360)."""
    return colorsys.rgb_to_hsv(*rgb)[0] * 360.0


def world_concepts() -> list[Concept]:
    """Every concept of the world, numbered 1..C in category order."""
    out: list[Concept] = []

    def add(name: str, category: str, semantics: str, rgb=None) -> None:
        out.append(Concept(len(out) + 1, name, category, category in IMAGE_LEVEL_CATEGORIES, semantics, rgb))

    for name, rgb in COLORS.items():
        add(name, "color", f"object pixels of palette colour {rgb} (hue {hue_degrees(rgb):.0f} deg), parts included", rgb)
    for name in SHAPES:
        add(name, "object", f"pixels of a {name}-shaped object")
    add("rim", "part", f"object pixels within {RIM_WIDTH} (image widths) of the outline; brightness x{RIM_SHADE}")
    add("cap", "part", f"top {CAP_FRACTION:.0%} of an object's height; colour mixed {CAP_WHITE:.0%} towards white")
    for name in MATERIALS:
        desc = {"metal": "smooth diagonal brightness gradient", "wood": "fine horizontal grain",
                "plastic": "flat shading"}[name]
        add(name, "material", f"object pixels of {name} material ({desc})")
    for name, rgb in SCENES.items():
        add(name, "scene", f"image whose background is the {name} type (base colour {rgb}, low chroma)", rgb)
    for name in TEXTURES:
        add(name, "texture", f"image whose background carries a {name} pattern (period {TEXTURE_PERIOD})")
    return out


#: Default class rules: name -> rule over image-level concept presence (grammar of :mod:`.formula`).
DEFAULT_CLASSES: dict[str, str] = {
    "red_circle": "red AND circle",
    "blue_square": "blue AND square",
    "warm_triangle": "(yellow OR orange) AND triangle",
    "striped_cross": "striped AND cross",
    "night_ring": "night AND ring",
    "green_on_grass": "green AND grass",
    "capped_purple": "purple AND cap",
    "indoor_no_circle": "indoor AND NOT circle",
}
