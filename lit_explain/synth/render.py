"""Rasterising and rendering synthetic scenes with numpy (no per-pixel Python loops).

Geometry lives in normalised image units (the image is the unit square, x to the right, y down). A shape
is rasterised by evaluating its *interior signed distance* (positive inside, in normalised units) at pixel
centres ``(k + 0.5) / size``; the same function rasterises the RGB image (``image_size``) and the label
masks (``mask_size``), so masks agree with the pixels they describe, and anyone can re-rasterise an
instance from its stored geometry (:func:`rasterize`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from .concepts import (CAP_FRACTION, CAP_WHITE, COLORS, RIM_SHADE, RIM_WIDTH, SCENES,
                       TEXTURE_DEPTH, TEXTURE_PERIOD)

__all__ = ["shape_extent", "BOUND_RADIUS", "rasterize", "render_image"]

#: Every shape fits in a disc of radius BOUND_RADIUS * r around its centre (used for placement).
BOUND_RADIUS = 1.21

_SQ = 0.85  # square half side / r
_DIA = 1.15  # diamond half diagonal / r
_RING_IN = 0.5  # ring inner radius / r
_ARM = 0.34  # cross arm half width / r
_TRI = ((0.0, -1.0), (0.95, 0.65), (-0.95, 0.65))  # triangle vertices / r (apex up), clockwise on screen


def shape_extent(shape: str, r: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) offsets of a shape's extent from its centre, normalised units."""
    if shape == "square":
        a = _SQ * r
        return (-a, -a, a, a)
    if shape == "diamond":
        a = _DIA * r
        return (-a, -a, a, a)
    if shape == "triangle":
        return (-0.95 * r, -r, 0.95 * r, 0.65 * r)
    return (-r, -r, r, r)


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Interior signed distance of a shape centred at the origin (positive inside)."""
    if shape == "circle":
        return r - np.sqrt(dx * dx + dy * dy)
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "square":
        return _SQ * r - np.maximum(ax, ay)
    if shape == "diamond":
        return (_DIA * r - ax - ay) * (1.0 / math.sqrt(2.0))
    if shape == "ring":
        d = np.sqrt(dx * dx + dy * dy)
        return np.minimum(r - d, d - _RING_IN * r)
    if shape == "cross":
        w = _ARM * r
        return np.maximum(np.minimum(r - ax, w - ay), np.minimum(w - ax, r - ay))
    if shape == "triangle":
        out = None
        for k in range(3):
            (x0, y0), (x1, y1) = _TRI[k], _TRI[(k + 1) % 3]
            ex, ey = x1 - x0, y1 - y0
            n = math.hypot(ex, ey)
            nx, ny = -ey / n, ex / n  # inward normal for a clockwise-on-screen (y down) polygon
            d = nx * (dx - x0 * r) + ny * (dy - y0 * r)
            out = d if out is None else np.minimum(out, d)
        return out
    raise ValueError(f"unknown shape {shape!r}")


@lru_cache(maxsize=16)
def _centres(size: int) -> np.ndarray:
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    c.setflags(write=False)
    return c


def _window(lo: float, hi: float, size: int) -> tuple[int, int]:
    """Pixel index range [a, b) whose centres may fall in [lo, hi]."""
    a = max(0, int(math.floor(lo * size - 0.5)))
    b = min(size, int(math.ceil(hi * size + 0.5)) + 1)
    return a, max(a, b)


def rasterize(objects: list[dict], size: int) -> dict[str, np.ndarray]:
    """Rasterise object geometry on a size x size grid.

    Args:
        objects: dicts with ``shape``, ``cx``, ``cy``, ``r`` (normalised), ``rim`` and ``cap`` (bool).
            Objects are painted in order; later objects cover earlier ones.

    Returns:
        dict with ``objid`` (size, size) int16 (0 = background, k+1 = objects[k]), ``rim`` and ``cap``
        (size, size) bool (part pixels of objects that have the part; visible pixels only), and
        ``windows``: per object, the pixel window (y0, y1, x0, x1) that can contain it.
    """
    c = _centres(size)
    objid = np.zeros((size, size), np.int16)
    rim = np.zeros((size, size), bool)
    cap = np.zeros((size, size), bool)
    windows = []
    for k, ob in enumerate(objects):
        cx, cy, r = float(ob["cx"]), float(ob["cy"]), float(ob["r"])
        left, top, right, bottom = shape_extent(ob["shape"], r)
        x0, x1 = _window(cx + left, cx + right, size)
        y0, y1 = _window(cy + top, cy + bottom, size)
        windows.append((y0, y1, x0, x1))
        if x1 <= x0 or y1 <= y0:
            continue
        dy = c[y0:y1, None] - cy
        d = _sdf(ob["shape"], c[None, x0:x1] - cx, dy, r)
        inside = d > 0
        objid[y0:y1, x0:x1][inside] = k + 1
        rim_w, cap_w = rim[y0:y1, x0:x1], cap[y0:y1, x0:x1]  # views
        rim_w[inside] = False  # a later object replaces the parts of what it covers
        cap_w[inside] = False
        if ob.get("rim"):
            rim_w |= inside & (d <= RIM_WIDTH)
        if ob.get("cap"):
            cap_w |= inside & (dy < top + CAP_FRACTION * (bottom - top))
    return {"objid": objid, "rim": rim, "cap": cap, "windows": windows}


def _texture_mod(texture: str | None, x: np.ndarray, y: np.ndarray, phase: tuple[float, float]) -> np.ndarray:
    """Additive background pattern in {-TEXTURE_DEPTH, 0} (0 everywhere when plain)."""
    if texture is None:
        return np.zeros(np.broadcast_shapes(x.shape, y.shape), np.float32)
    p = TEXTURE_PERIOD
    u, v = x / p + phase[0], y / p + phase[1]
    if texture == "striped":
        dark = np.mod(u + v, 1.0) < 0.5
    elif texture == "dotted":
        fu, fv = np.mod(u, 1.0) - 0.5, np.mod(v, 1.0) - 0.5
        dark = fu * fu + fv * fv < 0.22 ** 2
    elif texture == "chequered":
        dark = (np.floor(u) + np.floor(v)) % 2 == 0
    elif texture == "grid":  # thin dark lines in both directions
        dark = (np.mod(u, 1.0) < 0.25) | (np.mod(v, 1.0) < 0.25)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return np.where(dark, np.float32(-TEXTURE_DEPTH), np.float32(0.0))


def _texture_at(texture: str, size: int, phase: tuple[float, float]) -> np.ndarray:
    """The texture pattern on a size x size image; a slice of a cached tile when the period is whole pixels."""
    period_px = TEXTURE_PERIOD * size
    if abs(period_px - round(period_px)) > 1e-9:
        c = _centres(size)
        return _texture_mod(texture, c[None, :], c[:, None], phase)
    p = int(round(period_px))
    tile = _texture_tile(texture, size, p)
    oy, ox = int(phase[1] * p) % p, int(phase[0] * p) % p
    return tile[oy:oy + size, ox:ox + size]


@lru_cache(maxsize=32)
def _texture_tile(texture: str, size: int, p: int) -> np.ndarray:
    """Texture pattern with zero phase on (size + p)^2 pixels of an image of side ``size`` (period p px)."""
    c = (np.arange(size + p, dtype=np.float32) + 0.5) / size
    tile = _texture_mod(texture, c[None, :], c[:, None], (0.0, 0.0))
    tile.setflags(write=False)
    return tile


def _scene_mod(scene: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Low-frequency multiplicative background pattern of a scene, in [0.9, 1]."""
    if scene == "sky":
        m = 1.0 - 0.1 * y + 0 * x  # lighter at the top
    elif scene == "grass":
        m = 0.9 + 0.1 * y + 0 * x  # darker far away
    elif scene == "water":
        m = 0.95 + 0.05 * np.sin(2 * np.pi * (5 * y + 0.4 * np.sin(2 * np.pi * x)))
    elif scene == "indoor":
        m = np.where(y > 0.7, 0.9, 1.0) + 0 * x  # floor below the wall
    elif scene == "desert":
        m = 0.95 + 0.05 * np.sin(2 * np.pi * (2.5 * y + 1.2 * x))
    elif scene == "night":
        m = np.ones(np.broadcast_shapes(x.shape, y.shape))
    else:
        raise ValueError(f"unknown scene {scene!r}")
    return m.astype(np.float32)


def render_image(scene: dict, size: int, rng: np.random.Generator, noise: float,
                 noise_bank: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Render a scene to an RGB uint8 image.

    Args:
        scene: dict with ``scene``, ``texture`` (or None), ``texture_phase`` (2 floats) and ``objects``
            (dicts with shape, cx, cy, r, rim, cap, color, material, brightness).
        size: image side in pixels.
        rng: source of the per-pixel noise.
        noise: standard deviation of the additive Gaussian pixel noise, in [0, 1] intensity units.
        noise_bank: optional 1-D float32 array of standard normal values; when given, the noise is a
            window of it at an offset drawn from ``rng`` (much faster than drawing fresh normals).

    Returns:
        (size, size, 3) uint8 image and the image-resolution :func:`rasterize` output.
    """
    c = _centres(size)
    mod = _scene_background(scene["scene"], size)
    if scene["texture"] is not None:
        mod = mod + _texture_at(scene["texture"], size, tuple(scene["texture_phase"]))[:, :, None]
    else:
        mod = mod.copy()
    img = mod.reshape(-1, 3)
    objs = scene["objects"]
    ras = rasterize(objs, size)
    if objs:
        # vectorised over the object pixels: colour lookup, cap tint, rim shade, brightness, material
        col = np.zeros((len(objs) + 1, 3), np.float32)
        bright = np.ones(len(objs) + 1, np.float32)
        for k, ob in enumerate(objs):
            col[k + 1] = COLORS[ob["color"]]
            bright[k + 1] = ob["brightness"]
        fgi = np.flatnonzero(ras["objid"])
        oid = ras["objid"].ravel()[fgi]
        rgb = col[oid]
        capf = ras["cap"].ravel()[fgi]
        rgb[capf] = rgb[capf] * np.float32(1.0 - CAP_WHITE) + np.float32(CAP_WHITE)
        shade = bright[oid]
        shade[ras["rim"].ravel()[fgi]] *= np.float32(RIM_SHADE)
        shade *= _material_mod(objs, oid, c[fgi % size], c[fgi // size])
        img[fgi] = rgb * shade[:, None]
    if noise > 0:
        n = img.size
        if noise_bank is not None and noise_bank.size > n:
            off = int(rng.integers(noise_bank.size - n))
            eps = noise_bank[off:off + n].reshape(img.shape)
        else:
            eps = rng.standard_normal(img.shape, dtype=np.float32)
        img += eps * np.float32(noise)
    np.clip(img, 0.0, 1.0, out=img)
    img *= np.float32(255.0)
    img += np.float32(0.5)
    return img.astype(np.uint8).reshape(size, size, 3), ras


@lru_cache(maxsize=64)
def _scene_background(scene: str, size: int) -> np.ndarray:
    """(size, size, 3) float32 scene background (base colour x scene pattern); read-only, cached."""
    c = _centres(size)
    out = _scene_mod(scene, c[None, :], c[:, None])[:, :, None] * np.asarray(SCENES[scene], np.float32)
    out.setflags(write=False)
    return out


def _material_mod(objs: list[dict], oid: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Brightness factor of the objects' materials at object pixels (1 where none).

    Args:
        objs: the objects; oid: (F,) 1-based object id of each object pixel; xs, ys: (F,) pixel centres.
    """
    out = np.ones(oid.shape, np.float32)
    for k, ob in enumerate(objs):
        mat = ob.get("material")
        if mat is None or mat == "plastic":
            continue
        sel = oid == k + 1
        if mat == "metal":  # diagonal gradient from 1 (top left) to 0.88 (bottom right)
            t = np.clip(((xs[sel] - ob["cx"]) + (ys[sel] - ob["cy"])) / (4.0 * ob["r"]) + 0.5, 0.0, 1.0)
            out[sel] = 1.0 - 0.12 * t
        elif mat == "wood":  # fine horizontal grain
            out[sel] = 0.94 + 0.06 * np.sin(2 * np.pi * ys[sel] / 0.05)
        else:
            raise ValueError(f"unknown material {mat!r}")
    return out
