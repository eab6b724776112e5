"""Procedural pictures for the synthetic benchmark: faces, objects, styles.

Everything is drawn with numpy on a grid of normalised coordinates in
[-1, 1], so any image size works. Each concept has a *stable signature*
(an identity's skin, hair, hairstyle, eyes and mark; an object's silhouette;
a style's palette, textures and outline), and each picture varies the
nuisances around it: position, scale, tilt, mirror, lighting, colour cast,
background and noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------- palettes
SKIN = np.array(
    [
        [0.96, 0.80, 0.69],
        [0.87, 0.67, 0.52],
        [0.76, 0.55, 0.40],
        [0.58, 0.39, 0.26],
        [0.40, 0.26, 0.17],
        [0.98, 0.87, 0.80],
        [0.70, 0.50, 0.45],
    ]
)
HAIR = np.array(
    [
        [0.08, 0.06, 0.05],  # black
        [0.45, 0.28, 0.12],  # brown
        [0.93, 0.80, 0.35],  # blond
        [0.75, 0.25, 0.10],  # red
        [0.85, 0.85, 0.88],  # white
        [0.20, 0.35, 0.85],  # dyed blue
        [0.85, 0.25, 0.65],  # dyed pink
        [0.20, 0.65, 0.30],  # dyed green
    ]
)
EYES = np.array(
    [
        [0.05, 0.05, 0.05],
        [0.15, 0.45, 0.95],
        [0.10, 0.70, 0.25],
        [0.55, 0.30, 0.08],
        [0.60, 0.60, 0.65],
        [0.70, 0.10, 0.70],
    ]
)
MARK = np.array(
    [
        [0.90, 0.10, 0.10],
        [0.10, 0.10, 0.10],
        [0.95, 0.85, 0.10],
        [0.10, 0.80, 0.90],
        [0.95, 0.95, 0.95],
    ]
)
HAIR_STYLES = ("cap", "long", "mohawk", "beard")
MARKS = ("none", "glasses", "hat", "earrings", "facepaint")

# Hand-designed looks for styles: (fill pattern, fg colours, bg pattern,
# bg colours, outline colour or None, post-process).
STYLE_LOOKS = (
    ("hstripes", [[0.95, 0.35, 0.10], [0.98, 0.85, 0.20]], "solid", [[0.10, 0.10, 0.30], [0.10, 0.10, 0.30]], None, None),
    ("solid", [[0.90, 0.95, 0.40], [0.90, 0.95, 0.40]], "solid", [[0.05, 0.05, 0.05], [0.05, 0.05, 0.05]], [0.20, 1.00, 0.90], "glow"),
    ("solid", [[0.15, 0.15, 0.15], [0.15, 0.15, 0.15]], "paper", [[0.92, 0.90, 0.84], [0.80, 0.78, 0.72]], [0.00, 0.00, 0.00], "gray"),
    ("checker", [[0.20, 0.40, 0.90], [0.95, 0.95, 0.95]], "checker", [[0.85, 0.75, 0.55], [0.70, 0.60, 0.40]], None, None),
    ("dots", [[0.95, 0.30, 0.60], [1.00, 0.90, 0.95]], "solid", [[0.60, 0.90, 0.75], [0.60, 0.90, 0.75]], None, "pastel"),
    ("dstripes", [[0.10, 0.50, 0.20], [0.05, 0.25, 0.10]], "vstripes", [[0.95, 0.90, 0.70], [0.90, 0.80, 0.55]], None, None),
    ("radial", [[1.00, 0.95, 0.60], [0.90, 0.30, 0.05]], "vgrad", [[0.30, 0.05, 0.40], [0.95, 0.45, 0.20]], None, None),
    ("solid", [[0.85, 0.10, 0.10], [0.85, 0.10, 0.10]], "solid", [[0.95, 0.95, 0.95], [0.95, 0.95, 0.95]], [0.05, 0.05, 0.05], "posterize"),
    ("vstripes", [[0.50, 0.20, 0.80], [0.95, 0.60, 0.95]], "dots", [[0.15, 0.15, 0.20], [0.40, 0.40, 0.50]], None, None),
    ("noise", [[0.20, 0.80, 0.30], [0.90, 0.90, 0.20]], "noise", [[0.35, 0.20, 0.10], [0.55, 0.40, 0.25]], None, "blur"),
)

# Silhouettes for objects, in the order object names are assigned to them.
SHAPES = (
    "ball", "crate", "pyramid", "star", "donut", "cross",
    "heart", "kite", "moon", "arrow", "house", "tree",
)  # fmt: skip


@dataclass(frozen=True)
class IdentityLook:
    skin: int
    hair: int
    eyes: int
    hair_style: int
    mark: int
    mark_color: int

    def attributes(self) -> tuple[int, ...]:
        return (self.skin, self.hair, self.eyes, self.hair_style, self.mark, self.mark_color)


def identity_looks(n: int, seed: int, min_distance: int = 3) -> list[IdentityLook]:
    """``n`` identity signatures, pairwise different in >= min_distance attributes."""
    rng = np.random.default_rng([seed, 7001])
    sizes = (len(SKIN), len(HAIR), len(EYES), len(HAIR_STYLES), len(MARKS), len(MARK))
    looks: list[IdentityLook] = []
    dist = min_distance
    tries = 0
    while len(looks) < n:
        cand = IdentityLook(*(int(rng.integers(s)) for s in sizes))
        a = cand.attributes()
        if all(sum(x != y for x, y in zip(a, o.attributes())) >= dist for o in looks):
            looks.append(cand)
            tries = 0
        else:
            tries += 1
            if tries > 5000:  # too many identities for this distance
                dist -= 1
                tries = 0
                if dist < 1:
                    raise ValueError(f"cannot draw {n} distinct identity signatures")
    return looks


# ------------------------------------------------------------- primitives
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(c, c)  # x to the right, y downwards


def soft(sdf: np.ndarray, size: int) -> np.ndarray:
    """Antialiased coverage of the region sdf < 0, one pixel wide edge."""
    return np.clip(0.5 - sdf * size / 2.0, 0.0, 1.0)


def sd_ellipse(x, y, cx, cy, rx, ry):
    return (np.sqrt(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def sd_box(x, y, cx, cy, hx, hy):
    dx = np.abs(x - cx) - hx
    dy = np.abs(y - cy) - hy
    outside = np.sqrt(np.maximum(dx, 0) ** 2 + np.maximum(dy, 0) ** 2)
    return outside + np.minimum(np.maximum(dx, dy), 0)


def sd_triangle(x, y, top, base_y, half_w):
    # isosceles triangle: apex (0, top), base from (-half_w, base_y) to (half_w, base_y)
    h = base_y - top
    slope = half_w / h
    edge = (np.abs(x) - (y - top) * slope) / np.sqrt(1 + slope**2)
    return np.maximum(edge, np.maximum(top - y, y - base_y))


def sd_star(x, y, r_out=0.75, r_in=0.32, points=5):
    ang = np.arctan2(x, -y)
    rad = np.hypot(x, y)
    sector = 2 * np.pi / points
    a = np.mod(ang, sector) - sector / 2
    # radius of the star boundary along angle a (linear between tip and notch)
    t = np.abs(a) / (sector / 2)
    boundary = r_out * (1 - t) + r_in * t
    return (rad - boundary) * 0.6


def shape_sdf(shape: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    if shape == "ball":
        return sd_ellipse(x, y, 0, 0, 0.62, 0.62)
    if shape == "crate":
        return sd_box(x, y, 0, 0, 0.55, 0.55)
    if shape == "pyramid":
        return sd_triangle(x, y, -0.7, 0.6, 0.72)
    if shape == "star":
        return sd_star(x, y)
    if shape == "donut":
        r = np.hypot(x, y)
        return np.maximum(r - 0.68, 0.32 - r)
    if shape == "cross":
        return np.minimum(sd_box(x, y, 0, 0, 0.62, 0.2), sd_box(x, y, 0, 0, 0.2, 0.62))
    if shape == "heart":
        lobes = np.minimum(sd_ellipse(x, y, -0.3, -0.25, 0.34, 0.34), sd_ellipse(x, y, 0.3, -0.25, 0.34, 0.34))
        return np.minimum(lobes, sd_triangle(x, -y, -0.7, 0.2, 0.62))
    if shape == "kite":
        return (np.abs(x) / 0.5 + np.abs(y) / 0.75 - 1) * 0.4
    if shape == "moon":
        return np.maximum(sd_ellipse(x, y, 0, 0, 0.65, 0.65), -sd_ellipse(x, y, 0.32, -0.12, 0.52, 0.52))
    if shape == "arrow":
        shaft = sd_box(x, y, -0.2, 0, 0.45, 0.14)
        head = sd_triangle(y, -x, -0.72, -0.1, 0.45)
        return np.minimum(shaft, head)
    if shape == "house":
        return np.minimum(sd_box(x, y, 0, 0.25, 0.45, 0.4), sd_triangle(x, y, -0.75, -0.12, 0.65))
    if shape == "tree":
        crown = sd_triangle(x, y, -0.8, 0.35, 0.6)
        return np.minimum(crown, sd_box(x, y, 0, 0.55, 0.1, 0.22))
    raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")


def transform(x, y, cx, cy, scale, angle, flip):
    """Coordinates in the frame of an object centred at (cx, cy)."""
    u, v = (x - cx) / scale, (y - cy) / scale
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * u + s * v, -s * u + c * v
    return (-u if flip else u), v


def paint(img: np.ndarray, cover: np.ndarray, color) -> np.ndarray:
    color = np.asarray(color, dtype=np.float64)
    if color.ndim == 1:
        color = color[None, None, :]
    return img * (1 - cover[..., None]) + color * cover[..., None]


def pattern(kind: str, colors, size: int, rng: np.random.Generator) -> np.ndarray:
    """An (H, W, 3) texture of two colours."""
    a, b = (np.asarray(c, dtype=np.float64) for c in colors)
    x, y = grid(size)
    phase = rng.uniform(0, 2 * np.pi)
    freq = rng.uniform(5.5, 7.0)
    if kind == "solid":
        t = np.zeros_like(x)
    elif kind == "hstripes":
        t = (np.sin(y * freq * 1.6 + phase) > 0).astype(float)
    elif kind == "vstripes":
        t = (np.sin(x * freq * 1.6 + phase) > 0).astype(float)
    elif kind == "dstripes":
        t = (np.sin((x + y) * freq * 1.2 + phase) > 0).astype(float)
    elif kind == "checker":
        n = rng.uniform(3.5, 4.5)
        t = ((np.floor((x + 1) * n) + np.floor((y + 1) * n)) % 2).astype(float)
    elif kind == "dots":
        n = rng.uniform(3.2, 4.0)
        gx, gy = (x + 1) * n % 1 - 0.5, (y + 1) * n % 1 - 0.5
        t = (np.hypot(gx, gy) < 0.3).astype(float)
    elif kind == "radial":
        t = np.clip(np.hypot(x, y), 0, 1)
    elif kind == "vgrad":
        t = (y + 1) / 2
    elif kind == "paper":
        t = np.clip(rng.normal(0.3, 0.25, x.shape), 0, 1)
    elif kind == "noise":
        t = (rng.random(x.shape) > 0.5).astype(float)
    else:
        raise ValueError(f"unknown pattern {kind!r}")
    return a * (1 - t[..., None]) + b * t[..., None]


def blur3(img: np.ndarray) -> np.ndarray:
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[i : i + img.shape[0], j : j + img.shape[1]] for i in range(3) for j in range(3)) / 9


def natural_background(size: int, rng: np.random.Generator) -> np.ndarray:
    """A nuisance background: a random two-colour gradient with soft blobs."""
    x, y = grid(size)
    c1, c2 = rng.uniform(0.05, 0.95, (2, 3))
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip((np.cos(ang) * x + np.sin(ang) * y + 1) / 2, 0, 1)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(-1, 1, 2)
        r = rng.uniform(0.15, 0.5)
        img = paint(img, soft(sd_ellipse(x, y, cx, cy, r, r), size) * 0.5, rng.uniform(0, 1, 3))
    return img


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Lighting, colour cast and sensor noise."""
    gain = rng.uniform(1 - 0.3 * strength, 1 + 0.25 * strength)
    cast = rng.normal(0, 0.04 * strength, 3)
    noise = rng.normal(0, rng.uniform(0.01, 0.045) * strength, img.shape)
    return np.clip(img * gain + cast + noise, 0, 1)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- drawing
def draw_face(img, look: IdentityLook, size, rng, cx=0.0, cy=0.05, scale=1.0):
    x, y = grid(size)
    flip = bool(rng.integers(2))
    angle = rng.normal(0, 0.12)
    u, v = transform(x, y, cx, cy, scale, angle, flip)
    f = lambda sdf: soft(sdf * scale, size)  # noqa: E731  (sdf in object units)
    hair = HAIR[look.hair]
    style = HAIR_STYLES[look.hair_style]
    # shoulders in a random shirt colour: a nuisance, not part of the signature
    img = paint(img, f(sd_ellipse(u, v, 0, 1.12, 0.78, 0.45)), rng.uniform(0.05, 0.95, 3))
    if style == "long":
        img = paint(img, f(sd_ellipse(u, v, 0, 0.08, 0.56, 0.7)), hair)
    img = paint(img, f(sd_ellipse(u, v, 0, 0.0, 0.42, 0.54)), SKIN[look.skin])
    if style == "cap" or style == "long":
        cap = np.maximum(sd_ellipse(u, v, 0, -0.02, 0.46, 0.58), v + 0.22)
        img = paint(img, f(cap), hair)
    elif style == "mohawk":
        img = paint(img, f(sd_box(u, v, 0, -0.55, 0.12, 0.28)), hair)
    elif style == "beard":
        beard = np.maximum(sd_ellipse(u, v, 0, 0.0, 0.43, 0.55), 0.22 - v)
        img = paint(img, f(beard), hair)
    for ex in (-0.17, 0.17):
        img = paint(img, f(sd_ellipse(u, v, ex, -0.05, 0.1, 0.08)), [0.97, 0.97, 0.97])
        img = paint(img, f(sd_ellipse(u, v, ex, -0.05, 0.065, 0.065)), EYES[look.eyes])
    img = paint(img, f(sd_box(u, v, 0, 0.28, 0.12, 0.035)), [0.55, 0.12, 0.12])
    mark = MARKS[look.mark]
    mcol = MARK[look.mark_color]
    if mark == "glasses":
        ring = lambda ex: np.abs(sd_ellipse(u, v, ex, -0.05, 0.15, 0.12)) - 0.03  # noqa: E731
        img = paint(img, f(np.minimum(np.minimum(ring(-0.17), ring(0.17)), sd_box(u, v, 0, -0.07, 0.05, 0.02))), mcol)
    elif mark == "hat":
        img = paint(img, f(np.minimum(sd_box(u, v, 0, -0.5, 0.55, 0.07), sd_box(u, v, 0, -0.68, 0.33, 0.16))), mcol)
    elif mark == "earrings":
        for ex in (-0.45, 0.45):
            img = paint(img, f(sd_ellipse(u, v, ex, 0.18, 0.07, 0.07)), mcol)
    elif mark == "facepaint":
        img = paint(img, f(sd_box(u, v, 0.0, 0.13, 0.4, 0.045)), mcol)
    return img


def face_image(look: IdentityLook, size: int, rng: np.random.Generator) -> np.ndarray:
    img = natural_background(size, rng)
    s = rng.uniform(0.78, 1.0)
    img = draw_face(img, look, size, rng, cx=rng.uniform(-0.12, 0.12), cy=rng.uniform(-0.05, 0.15), scale=s)
    return to_uint8(photometric(img, rng))


def two_faces_image(a: IdentityLook, b: IdentityLook, size: int, rng) -> np.ndarray:
    img = natural_background(size, rng)
    s = rng.uniform(0.5, 0.58)
    img = draw_face(img, a, size, rng, cx=-0.48, cy=0.1 + rng.uniform(-0.08, 0.08), scale=s)
    img = draw_face(img, b, size, rng, cx=0.48, cy=0.1 + rng.uniform(-0.08, 0.08), scale=s)
    return to_uint8(photometric(img, rng))


def object_cover(shape: str, size: int, rng, cx=None, cy=None, scale=None) -> np.ndarray:
    x, y = grid(size)
    cx = rng.uniform(-0.15, 0.15) if cx is None else cx
    cy = rng.uniform(-0.15, 0.15) if cy is None else cy
    scale = rng.uniform(0.68, 0.9) if scale is None else scale
    u, v = transform(x, y, cx, cy, scale, rng.normal(0, 0.1), bool(rng.integers(2)) and shape != "arrow")
    return soft(shape_sdf(shape, u, v) * scale, size)


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def object_color(shape: str, rng) -> np.ndarray:
    """An object's characteristic hue (as real object classes have), jittered."""
    hue = (SHAPES.index(shape) * 5 / len(SHAPES) + rng.normal(0, 0.012)) % 1.0
    return hsv_to_rgb(hue, rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))


def plain_background(size: int, rng) -> np.ndarray:
    """A muted two-tone gradient: the object, not the scene, carries colour."""
    x, y = grid(size)
    c1, c2 = rng.uniform(0.3, 0.8, (2, 1)) + rng.normal(0, 0.05, (2, 3))
    ang = rng.uniform(0, 2 * np.pi)
    t = np.clip((np.cos(ang) * x + np.sin(ang) * y + 1) / 2, 0, 1)
    return np.clip(c1 * (1 - t[..., None]) + c2 * t[..., None], 0, 1)


def object_photo(shape: str, size: int, rng) -> np.ndarray:
    """An object in its characteristic colour on a muted background ("a photo")."""
    img = plain_background(size, rng)
    cover = object_cover(shape, size, rng)
    base = object_color(shape, rng)
    x, y = grid(size)
    shade = (1.0 - 0.25 * (x + y + 2) / 4)[..., None]  # simple top-left lighting
    fg = np.clip(base * shade, 0, 1)
    img = img * (1 - cover[..., None]) + fg * cover[..., None]
    return to_uint8(photometric(img, rng))


def styled_object(shape: str, look, size: int, rng) -> np.ndarray:
    """An object rendered in a style: textures, palette, outline, post-process."""
    fill, fg, bgkind, bg, outline, post = look
    cover = object_cover(shape, size, rng)
    img = pattern(bgkind, bg, size, rng)
    img = img * (1 - cover[..., None]) + pattern(fill, fg, size, rng) * cover[..., None]
    if outline is not None:
        edge = np.clip(cover * (1 - cover) * 4, 0, 1) ** 0.5
        img = paint(img, edge, outline)
    if post == "gray":
        img = np.repeat(img.mean(axis=2, keepdims=True), 3, axis=2)
    elif post == "glow":
        img = np.clip(img + 0.6 * blur3(blur3(img * (1 - cover[..., None]))), 0, 1)
    elif post == "pastel":
        img = 0.55 * img + 0.45
    elif post == "posterize":
        img = np.round(img * 2) / 2
    elif post == "blur":
        img = blur3(img)
    return to_uint8(photometric(img, rng, strength=0.4))


def face_with_object(look: IdentityLook, shape: str, size: int, rng) -> np.ndarray:
    img = natural_background(size, rng)
    img = draw_face(img, look, size, rng, cx=-0.38, cy=0.1, scale=0.62)
    cover = object_cover(shape, size, rng, cx=0.55, cy=0.35, scale=0.38)
    img = paint(img, cover, rng.uniform(0.05, 0.95, 3))
    return to_uint8(photometric(img, rng))


def scene_image(size: int, rng) -> np.ndarray:
    """A picture of nothing in particular (for captions that name no concept)."""
    kind = rng.integers(3)
    if kind == 0:  # landscape: sky over ground
        x, y = grid(size)
        horizon = rng.uniform(-0.3, 0.4) + 0.15 * np.sin(x * rng.uniform(1, 4) + rng.uniform(0, 6))
        img = np.where((y < horizon)[..., None], rng.uniform(0.4, 1, 3), rng.uniform(0, 0.6, 3))
        img = img.astype(float)
    elif kind == 1:
        img = natural_background(size, rng)
    else:
        img = pattern(str(rng.choice(["paper", "noise", "checker", "dots"])), rng.uniform(0, 1, (2, 3)), size, rng)
    return to_uint8(photometric(img, rng))
