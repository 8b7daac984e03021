"""Procedural *synthetic* faces: a stand-in dataset for when UTKFace is absent.

This module draws cartoon-like faces with Pillow from a handful of random
parameters.  It exists so that every notebook and test of the course runs on
a fresh offline clone or on CI, where the real UTKFace photos are not
available.  **These images are NOT real data.**  Nothing learned from them
says anything about real faces, real people or real fairness problems; they
only let the code paths (loading, training, evaluation, group metrics) run
end to end with a signal that is learnable.

What the generator encodes, and why:

* **Age** changes the drawing continuously, following well-known cues of
  facial ageing: children have rounder, relatively larger heads with the
  features placed lower, large eyes and a small nose; the face lengthens into
  adulthood; after about 30 forehead lines, crow's feet, under-eye lines and
  nasolabial folds appear and deepen; hair greys after about 40 and the
  hairline recedes (more for males); lips thin, the skin darkens slightly and
  gets age spots; jowls appear after about 60.  Each face also gets its own
  "biological" ageing rate, so age is learnable but never exactly readable.
* **Gender** (0 male, 1 female) shifts hair length, jaw width, brow thickness
  and lip colour, always with overlap between the groups.
* **Race** (0 White, 1 Black, 2 Asian, 3 Indian, 4 Others, the UTKFace codes)
  sets the skin, hair and eye colour distributions, so that group-wise
  (fairness) analyses have groups to compare.
* **Nuisance** factors are random and independent of the labels: background,
  head position, scale and rotation, lighting gradient, colour cast, pixel
  noise, glasses, expression and JPEG quality.

``write_synthetic_faces`` writes the faces with UTKFace-style file names,
``{age}_{gender}_{race}_{timestamp}.jpg.chip.jpg``, so the ordinary UTKFace
loader reads them unchanged.

>>> import numpy as np
>>> render_face(30, 1, 2, np.random.default_rng(0), size=64).size
(64, 64)
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..files import written_whole

__all__ = [
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "RACE_NAMES",
    "RACE_PROBS",
    "render_face",
    "sample_labels",
    "write_synthetic_faces",
]

#: Bump whenever the drawing changes, so cached folders get regenerated.
GENERATOR_VERSION = 1
#: Marker file that records what a folder holds (makes regeneration cheap to skip).
MARKER_NAME = ".synthetic.json"
RACE_NAMES = ("White", "Black", "Asian", "Indian", "Others")
#: Roughly the group frequencies of UTKFace, deliberately unequal.
RACE_PROBS = (0.42, 0.19, 0.15, 0.17, 0.07)
FEMALE_PROB = 0.48
#: Faces are drawn at this multiple of the output size, then downsampled (antialiasing).
SUPERSAMPLE = 2
SYNTHETIC_NAME_RE = re.compile(r"^\d+_[01]_[0-4]_2017\d{13}\.jpg\.chip\.jpg$")

# (age, relative frequency): a hand-smoothed version of the UTKFace age histogram
# (many babies, a big bump at 20-35, a thin tail above 80); linearly interpolated.
_AGE_ANCHORS = (
    (1, 1100), (2, 480), (3, 290), (4, 270), (5, 190), (7, 150), (10, 150),
    (13, 130), (16, 200), (19, 250), (22, 400), (24, 700), (26, 1000), (28, 800),
    (30, 650), (35, 500), (40, 380), (45, 280), (50, 260), (55, 230), (60, 180),
    (65, 130), (70, 90), (75, 70), (80, 50), (85, 40), (90, 25), (95, 10), (100, 6),
)
_SKIN = {0: (234, 198, 174), 1: (122, 82, 58), 2: (228, 193, 154), 3: (182, 131, 96), 4: (204, 160, 122)}
_SKIN_SPREAD = {0: 10.0, 1: 14.0, 2: 9.0, 3: 14.0, 4: 22.0}
_DARK_HAIR = ((28, 22, 20), (45, 33, 27), (62, 44, 32))
_LIGHT_HAIR = ((205, 172, 112), (150, 78, 42), (112, 78, 50))
_BROWN_EYES = ((70, 45, 28), (95, 62, 36), (45, 30, 22))
_LIGHT_EYES = ((72, 112, 160), (92, 122, 84), (110, 110, 125))

Color = tuple[int, int, int]


# ----------------------------------------------------------------------------- labels
def sample_labels(n: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    """Draw ``n`` (age, gender, race) triples distributed roughly like UTKFace.

    The skew matters for teaching: a model that predicts the mean does well on
    the 20-35 bulk and badly on babies and the elderly, as on the real data.

    >>> labels = sample_labels(5, np.random.default_rng(0))
    >>> len(labels), all(1 <= a <= 100 and g in (0, 1) and 0 <= r <= 4 for a, g, r in labels)
    (5, True)
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ages = rng.choice(np.arange(1, 101), size=n, p=_age_pmf())
    genders = (rng.random(n) < FEMALE_PROB).astype(int)
    races = rng.choice(5, size=n, p=np.asarray(RACE_PROBS) / sum(RACE_PROBS))
    return [(int(a), int(g), int(r)) for a, g, r in zip(ages, genders, races)]


@lru_cache(maxsize=1)
def _age_pmf() -> np.ndarray:
    """Probabilities of ages 1..100, interpolated from ``_AGE_ANCHORS``."""
    xs, ys = zip(*_AGE_ANCHORS)
    weights = np.interp(np.arange(1, 101), xs, ys)
    return weights / weights.sum()


# ----------------------------------------------------------------------------- parameters
def _clip01(x: float) -> float:
    return min(1.0, max(0.0, x))


def _mix(a: Color, b: Color, t: float) -> Color:
    """Blend colour ``a`` towards ``b`` by ``t`` (0 keeps ``a``)."""
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))  # type: ignore[return-value]


def _shade(c: Color, f: float) -> Color:
    """Multiply a colour by ``f``: cheap shadows and wrinkle lines on the skin."""
    return tuple(int(min(255, max(0, round(x * f)))) for x in c)  # type: ignore[return-value]


def _pick(options: tuple, rng: np.random.Generator):
    return options[int(rng.integers(len(options)))]


@dataclass(frozen=True)
class _AgeCues:
    """Age expressed as continuous 0..1 strengths of visible ageing signs."""

    growth: float  # 0 newborn .. 1 adult proportions
    wrinkle: float  # forehead lines, crow's feet, folds (from ~30)
    grey: float  # hair greying (from ~40)
    recede: float  # hairline recession / baldness
    jowl: float  # sagging lower face (from ~60)
    spots: float  # age spots, skin darkening
    thin_lips: float  # lip thinning
    elong: float  # late-life lengthening of face and nose


def _age_cues(age: float, gender: int, rng: np.random.Generator) -> _AgeCues:
    """Map age to cue strengths, with a per-person ageing rate and onsets.

    The random ageing rate is what keeps age from being exactly readable from
    the picture: two 50-year-olds can look 44 and 57.
    """
    bio = max(0.5, age) * math.exp(rng.normal(0.0, 0.08))
    recede_gain = rng.uniform(0.2, 1.0) * (1.0 if gender == 0 else 0.25)
    return _AgeCues(
        growth=1.0 - math.exp(-bio / 6.0),
        wrinkle=_clip01((bio - 28.0) / 52.0) ** 0.85,
        grey=_clip01((bio - 40.0 - rng.normal(0.0, 6.0)) / 35.0),
        recede=_clip01((bio - 25.0) / 45.0) * recede_gain,
        jowl=_clip01((bio - 58.0) / 30.0),
        spots=_clip01((bio - 50.0) / 40.0),
        thin_lips=_clip01((bio - 25.0) / 60.0),
        elong=_clip01((bio - 40.0) / 50.0),
    )


@dataclass(frozen=True)
class _Face:
    """Everything needed to draw one face, in canvas pixels."""

    canvas: int
    cx: float
    cy: float
    w: float  # head half-width
    h: float  # head half-height
    angle: float
    cues: _AgeCues
    masc: float  # >0 masculine, <0 feminine; gender shifts it, noise blurs it
    skin: Color
    hair: Color
    eye_color: Color
    lip: Color
    brow_color: Color
    hair_volume: float
    hair_length: float  # 0 short .. 1 long hair reaching the shoulders
    fringe: bool
    eye_y: float
    eye_sep: float
    eye_rw: float
    eye_rh: float
    nose_y: float
    nose_w: float
    mouth_y: float
    mouth_w: float
    jaw: float
    smile: float
    light_side: int
    glasses: int  # 0 none, 1 clear, 2 sunglasses
    shirt: Color


def _sample_face(age: float, gender: int, race: int, rng: np.random.Generator, canvas: int) -> _Face:
    """Draw all random parameters of one face (labels -> appearance)."""
    cues = _age_cues(age, gender, rng)
    masc = (1.0 if gender == 0 else -1.0) * 0.7 + rng.normal(0.0, 0.45)
    head = _sample_head(cues, rng, canvas)
    colours = _sample_colours(race, gender, age, cues, masc, rng)
    layout = _sample_layout(cues, masc, race, head, rng)
    style = _sample_style(gender, age, cues, rng)
    return _Face(canvas=canvas, cues=cues, masc=masc, **head, **colours, **layout, **style)


def _sample_head(cues: _AgeCues, rng: np.random.Generator, canvas: int) -> dict:
    """Head box: children rounder and relatively larger; position/scale/tilt jitter."""
    w = canvas * 0.27 * (1.0 + 0.12 * (1.0 - cues.growth)) * math.exp(rng.normal(0.0, 0.05))
    aspect = 1.10 + 0.20 * cues.growth + 0.07 * cues.elong + rng.normal(0.0, 0.03)
    return {
        "cx": canvas * (0.5 + rng.normal(0.0, 0.025)),
        "cy": canvas * (0.5 + rng.normal(0.0, 0.025)),
        "w": w,
        "h": w * aspect,
        "angle": float(np.clip(rng.normal(0.0, 3.5), -8.0, 8.0)),
    }


def _sample_colours(race: int, gender: int, age: float, cues: _AgeCues, masc: float,
                    rng: np.random.Generator) -> dict:
    """Skin, hair, eye and lip colours; race sets the distributions, age greys and darkens."""
    tone = rng.normal(0.0, _SKIN_SPREAD[race])
    skin = tuple(int(np.clip(c + tone + rng.normal(0.0, 4.0), 30, 250)) for c in _SKIN[race])
    skin = _shade(_mix(skin, (238, 180, 170), 0.12 * (1.0 - cues.growth)), 1.0 - 0.08 * cues.spots)
    light = race == 0 and rng.random() < 0.45
    hair = _pick(_LIGHT_HAIR if light else _DARK_HAIR, rng)
    hair = _shade(hair, math.exp(rng.normal(0.0, 0.12)))
    greyed = _mix(hair, _shade((205, 205, 210), rng.uniform(0.8, 1.08)), cues.grey)
    density = _clip01(0.25 + 1.8 * cues.growth)  # babies: sparse, skin shows through
    eyes = _pick(_LIGHT_EYES if race == 0 and rng.random() < 0.4 else _BROWN_EYES, rng)
    return {
        "skin": skin,
        "hair": _mix(skin, greyed, density),
        "brow_color": _mix(_mix(skin, hair, 0.4 + 0.5 * cues.growth), (200, 200, 200), 0.5 * cues.grey),
        "eye_color": eyes,
        "lip": _lip_colour(skin, gender, age, masc, rng),
        "shirt": tuple(int(c) for c in rng.integers(20, 235, 3)),
    }


def _lip_colour(skin: Color, gender: int, age: float, masc: float, rng: np.random.Generator) -> Color:
    """Natural lips are a reddened skin tone; some adult women wear lipstick."""
    natural = _mix(_shade(skin, 0.85), (170, 70, 75), 0.35 + 0.1 * rng.random())
    if gender == 1 and age >= 15 and rng.random() < 0.45:
        return _mix(natural, _pick(((190, 30, 50), (200, 80, 110), (150, 40, 60)), rng), 0.75)
    return _mix(natural, (175, 70, 80), _clip01(-masc * 0.25))


def _sample_layout(cues: _AgeCues, masc: float, race: int, head: dict, rng: np.random.Generator) -> dict:
    """Feature placement: child faces have features lower, bigger eyes, a small nose."""
    w, h, cy = head["w"], head["h"], head["cy"]
    young = 1.0 - cues.growth
    eye_rw = w * (0.15 + 0.05 * young) * math.exp(rng.normal(0.0, 0.06))
    eye_open = (0.50 + 0.14 * young - 0.12 * cues.wrinkle) * (0.78 if race == 2 else 1.0)
    eye_y = cy + h * (0.02 + 0.18 * young + rng.normal(0.0, 0.02))
    nose_y = eye_y + h * (0.21 + 0.13 * cues.growth + 0.04 * cues.elong + rng.normal(0.0, 0.015))
    thick = 1.0 + 0.15 * (race == 1) + 0.1 * (race == 3)
    return {
        "eye_y": eye_y,
        "eye_sep": w * (0.36 + rng.normal(0.0, 0.015)),
        "eye_rw": eye_rw,
        "eye_rh": eye_rw * eye_open * math.exp(rng.normal(0.0, 0.08)),
        "nose_y": nose_y,
        "nose_w": w * (0.08 + 0.06 * cues.growth) * thick * math.exp(rng.normal(0.0, 0.08)),
        "mouth_y": nose_y + h * (0.15 + 0.05 * cues.growth + rng.normal(0.0, 0.012)),
        "mouth_w": w * (0.17 + 0.09 * cues.growth) * math.exp(rng.normal(0.0, 0.07)),
        "jaw": float(np.clip(0.80 + 0.09 * masc * cues.growth + rng.normal(0.0, 0.03), 0.66, 0.99)),
    }


def _sample_style(gender: int, age: float, cues: _AgeCues, rng: np.random.Generator) -> dict:
    """Hair style, expression, glasses: mostly nuisance, hair length is a gender cue."""
    long_p = (0.8 if gender == 1 else 0.12) * _clip01(age / 6.0)
    long_hair = rng.random() < long_p
    p_glasses = 0.05 if age < 12 else 0.15
    glasses = 0 if rng.random() >= p_glasses else (2 if rng.random() < 0.2 else 1)
    return {
        "hair_volume": rng.uniform(0.04, 0.22) * (1.0 - 0.8 * max(0.0, cues.recede - 0.4)),
        "hair_length": rng.uniform(0.3, 1.0) if long_hair else 0.0,
        "fringe": bool(rng.random() < 0.2 and cues.recede < 0.3 and age > 2),
        "smile": max(0.0, rng.normal(0.3, 0.35)),
        "light_side": 1 if rng.random() < 0.5 else -1,
        "glasses": glasses,
    }


# ----------------------------------------------------------------------------- drawing
def _lw(f: _Face, frac: float) -> int:
    """Line width as a fraction of the head half-width, at least one pixel."""
    return max(1, int(round(frac * f.w)))


def _box(x: float, y: float, rx: float, ry: float) -> list[float]:
    return [x - rx, y - ry, x + rx, y + ry]


def _draw_hair_back(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Long hair falls behind the head down towards the shoulders."""
    if f.hair_length <= 0:
        return
    top = f.cy - f.h - f.hair_volume * f.w
    bottom = f.cy + f.h * (0.5 + 0.8 * f.hair_length)
    half = f.w * (1.12 + f.hair_volume)
    d.rounded_rectangle([f.cx - half, top, f.cx + half, bottom], radius=f.w * 0.8, fill=f.hair)


def _draw_body(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Neck and shoulders anchor the head like in a real portrait crop."""
    neck = f.w * (0.45 + 0.06 * f.masc)
    shoulder_top = f.cy + f.h * 1.02 + f.canvas * 0.02
    d.rectangle([f.cx - neck, f.cy + 0.4 * f.h, f.cx + neck, shoulder_top + f.w * 0.3],
                fill=_shade(f.skin, 0.82))
    d.ellipse([f.cx - 2.1 * f.w, shoulder_top, f.cx + 2.1 * f.w, shoulder_top + f.canvas * 0.8], fill=f.shirt)
    d.chord(_box(f.cx, shoulder_top, neck, f.w * 0.28), 0, 180, fill=_shade(f.skin, 0.82))


def _draw_ears(d: ImageDraw.ImageDraw, f: _Face) -> None:
    y = f.eye_y + 0.12 * f.h
    for s in (-1, 1):
        box = _box(f.cx + s * f.w * 0.96, y, f.w * 0.13, f.w * 0.22)
        d.ellipse(box, fill=_shade(f.skin, 0.93))
        d.arc(_box(f.cx + s * f.w * 0.98, y, f.w * 0.07, f.w * 0.14), 0, 360,
              fill=_shade(f.skin, 0.75), width=_lw(f, 0.02))


def _draw_head(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Cranium ellipse plus a jaw ellipse: a wider jaw makes a squarer face."""
    d.ellipse(_box(f.cx, f.cy, f.w, f.h), fill=f.skin)
    d.ellipse(_box(f.cx, f.cy + 0.38 * f.h, f.w * f.jaw, 0.62 * f.h), fill=f.skin)


def _draw_jowls(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """After ~60 the lower cheeks sag over the jaw line."""
    j = f.cues.jowl
    if j <= 0.02:
        return
    for s in (-1, 1):
        x, y = f.cx + s * f.w * 0.56, f.cy + f.h * (0.70 + 0.06 * j)
        box = _box(x, y, f.w * (0.20 + 0.06 * j), f.h * (0.10 + 0.08 * j))
        d.ellipse(box, fill=_shade(f.skin, 0.985))
        d.arc(box, 20, 160, fill=_shade(f.skin, 1.0 - 0.25 * j), width=_lw(f, 0.02))


def _hairline_y(f: _Face) -> float:
    """Where the hair starts: a fringe hangs low, recession moves it up."""
    return f.cy + (-0.30 if f.fringe else -0.56 - 0.25 * f.cues.recede) * f.h


def _hairline_chord(box: list[float], y_line: float) -> tuple[float, float]:
    """Start/end angles of the chord of ``box``'s ellipse above the line ``y = y_line``."""
    centre_y, half_h = (box[1] + box[3]) / 2, (box[3] - box[1]) / 2
    a = math.degrees(math.asin(np.clip((centre_y - y_line) / half_h, -1.0, 1.0)))
    return 180.0 + a, 360.0 - a


def _draw_hair_top(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Hair cap above the hairline; it recedes with age and the crown can go bald."""
    r, y_line = f.cues.recede, _hairline_y(f)
    box = [f.cx - f.w * (1.04 + 0.3 * f.hair_volume), f.cy - 1.02 * f.h - f.hair_volume * f.w,
           f.cx + f.w * (1.04 + 0.3 * f.hair_volume), f.cy + 1.02 * f.h]
    d.chord(box, *_hairline_chord(box, y_line), fill=f.hair)
    if not f.fringe:  # round the hairline; recession carves it into an arch
        arch = _box(f.cx, y_line, f.w * (0.5 + 0.2 * r), f.w * (0.05 + 0.3 * r))
        d.chord(arch, 180, 360, fill=f.skin)
    if r > 0.35:  # male-pattern baldness: skin shows on the crown
        bald = _box(f.cx, f.cy, f.w * (0.45 + 0.6 * (r - 0.35)), f.h)
        d.chord(bald, *_hairline_chord(bald, y_line + 0.02 * f.h), fill=f.skin)


def _draw_eyes(d: ImageDraw.ImageDraw, f: _Face, rng: np.random.Generator) -> None:
    """Eyes: big and round in children, narrower and hooded with age."""
    gaze = rng.normal(0.0, 0.15) * f.eye_rw
    lash = _shade(f.brow_color, 0.5)
    for s in (-1, 1):
        ex = f.cx + s * f.eye_sep
        d.arc(_box(ex, f.eye_y - f.eye_rh * 0.4, f.eye_rw * 1.05, f.eye_rh * (1.4 - 0.35 * f.cues.wrinkle)),
              200, 340, fill=_shade(f.skin, 0.82), width=_lw(f, 0.018))
        d.ellipse(_box(ex, f.eye_y, f.eye_rw, f.eye_rh), fill=(236, 232, 226))
        ir = min(f.eye_rh * 1.05, f.eye_rw * 0.55)
        d.ellipse(_box(ex + gaze, f.eye_y, ir, ir), fill=f.eye_color)
        d.ellipse(_box(ex + gaze, f.eye_y, ir * 0.45, ir * 0.45), fill=(15, 12, 12))
        d.ellipse(_box(ex + gaze + ir * 0.3, f.eye_y - ir * 0.3, ir * 0.15, ir * 0.15), fill=(250, 250, 250))
        d.arc(_box(ex, f.eye_y, f.eye_rw, f.eye_rh), 180, 360, fill=lash,
              width=_lw(f, 0.025 - 0.008 * f.masc))


def _draw_brows(d: ImageDraw.ImageDraw, f: _Face, rng: np.random.Generator) -> None:
    """Brows: thicker for masculine faces, thinner and lighter in children."""
    width = _lw(f, (0.040 + 0.012 * f.masc) * (0.5 + 0.5 * f.cues.growth) * math.exp(rng.normal(0.0, 0.15)))
    y = f.eye_y - f.eye_rh - f.w * (0.10 + 0.03 * rng.random())
    arch = f.w * (0.03 + 0.03 * rng.random())
    for s in (-1, 1):
        ex = f.cx + s * f.eye_sep
        pts = [(ex - s * f.eye_rw * 0.95, y + arch * 0.3), (ex + s * f.eye_rw * 0.1, y - arch),
               (ex + s * f.eye_rw * 1.2, y + arch * 0.4)]
        d.line(pts, fill=f.brow_color, width=width, joint="curve")


def _draw_nose(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Nose: a side shadow, the tip and the nostrils; short and small in children."""
    shadow, dark = _shade(f.skin, 0.84), _shade(f.skin, 0.55)
    side = f.light_side
    d.line([(f.cx + side * f.nose_w * 0.5, f.eye_y + f.eye_rh), (f.cx + side * f.nose_w * 0.75, f.nose_y - f.nose_w * 0.3)],
           fill=shadow, width=_lw(f, 0.03))
    d.arc(_box(f.cx, f.nose_y - f.nose_w * 0.1, f.nose_w * 1.05, f.nose_w * 0.45), 10, 170,
          fill=_shade(f.skin, 0.75), width=_lw(f, 0.018))
    for s in (-1, 1):
        d.ellipse(_box(f.cx + s * f.nose_w * 0.45, f.nose_y + f.nose_w * 0.12, f.nose_w * 0.22, f.nose_w * 0.12),
                  fill=dark)


def _draw_mouth(d: ImageDraw.ImageDraw, f: _Face) -> None:
    """Lips get thinner with age; colour is a (soft) gender cue."""
    full = 1.0 - 0.6 * f.cues.thin_lips
    upper, lower = f.w * 0.045 * full + 1, f.w * 0.065 * full + 1
    bend = f.smile * f.w * 0.05
    d.chord(_box(f.cx, f.mouth_y, f.mouth_w, upper), 180, 360, fill=_shade(f.lip, 0.92))
    d.chord(_box(f.cx, f.mouth_y, f.mouth_w * 0.88, lower), 0, 180, fill=f.lip)
    line = _shade(f.lip, 0.45)
    if bend >= 1.0:
        d.arc(_box(f.cx, f.mouth_y - bend, f.mouth_w, bend), 10, 170, fill=line, width=_lw(f, 0.02))
    else:
        d.line([(f.cx - f.mouth_w, f.mouth_y), (f.cx + f.mouth_w, f.mouth_y)], fill=line, width=_lw(f, 0.02))


def _draw_wrinkles(d: ImageDraw.ImageDraw, f: _Face, rng: np.random.Generator) -> None:
    """Forehead lines, crow's feet, under-eye lines and nasolabial folds from ~30."""
    k = f.cues.wrinkle * rng.uniform(0.7, 1.2)
    if k < 0.03:
        return
    col, width = _shade(f.skin, 1.0 - 0.45 * min(k, 1.0)), _lw(f, 0.012 + 0.012 * k)
    _forehead_lines(d, f, k, col, width)
    for s in (-1, 1):
        _eye_lines(d, f, s, k, col, width)
        _fold_lines(d, f, s, k, col, width)


def _forehead_lines(d: ImageDraw.ImageDraw, f: _Face, k: float, col: Color, width: int) -> None:
    hairline = _hairline_y(f)  # a fringe hides the upper lines
    y0 = f.eye_y - f.eye_rh - f.w * 0.25
    for i in range(int(1 + 3.5 * min(k, 1.0))):
        y = y0 - i * f.w * 0.09
        if y > hairline + f.w * 0.05:
            d.arc([f.cx - f.w * 0.45, y, f.cx + f.w * 0.45, y + f.h * 0.5], 215, 325, fill=col, width=width)


def _eye_lines(d: ImageDraw.ImageDraw, f: _Face, s: int, k: float, col: Color, width: int) -> None:
    ex = f.cx + s * f.eye_sep
    corner = ex + s * f.eye_rw * 1.12
    length = f.w * (0.05 + 0.08 * k)
    for ang in (-0.45, 0.0, 0.45):
        d.line([(corner, f.eye_y), (corner + s * length * math.cos(ang), f.eye_y + length * math.sin(ang))],
               fill=col, width=width)
    drop = f.eye_rh + f.w * (0.04 + 0.05 * k)
    d.arc(_box(ex, f.eye_y, f.eye_rw * 0.9, drop), 25, 155, fill=col, width=width)


def _fold_lines(d: ImageDraw.ImageDraw, f: _Face, s: int, k: float, col: Color, width: int) -> None:
    start = (f.cx + s * (f.nose_w * 1.1 + f.w * 0.03), f.nose_y - f.nose_w * 0.3)
    mid = (f.cx + s * (f.mouth_w + f.w * 0.05), f.mouth_y - f.h * 0.02)
    end = (f.cx + s * (f.mouth_w + f.w * 0.03), f.mouth_y + f.h * (0.06 + 0.06 * k))
    d.line([start, mid, end], fill=col, width=width, joint="curve")
    if f.cues.jowl > 0.1:  # marionette lines
        d.line([(f.cx + s * f.mouth_w * 0.95, f.mouth_y + f.h * 0.03),
                (f.cx + s * f.mouth_w * 1.05, f.mouth_y + f.h * (0.1 + 0.12 * f.cues.jowl))], fill=col, width=width)


def _draw_skin_marks(d: ImageDraw.ImageDraw, f: _Face, rng: np.random.Generator) -> None:
    """Rosy cheeks on small children, age spots on older skin."""
    if f.cues.growth < 0.75:
        blush = _mix(f.skin, (235, 120, 120), 0.3 * (1.0 - f.cues.growth))
        for s in (-1, 1):
            d.ellipse(_box(f.cx + s * f.w * 0.5, f.nose_y, f.w * 0.16, f.w * 0.12), fill=blush)
    for _ in range(int(rng.poisson(9.0 * f.cues.spots))):
        x, y = f.cx + f.w * rng.uniform(-0.65, 0.65), f.cy + f.h * rng.uniform(-0.7, 0.6)
        r = f.w * rng.uniform(0.012, 0.035)
        d.ellipse(_box(x, y, r, r * rng.uniform(0.7, 1.0)), fill=_mix(f.skin, (110, 75, 45), rng.uniform(0.15, 0.35)))


def _draw_glasses(d: ImageDraw.ImageDraw, f: _Face, rng: np.random.Generator) -> None:
    """Occasional glasses: a nuisance that hides the eye-region age cues."""
    if not f.glasses:
        return
    frame = _pick(((20, 20, 20), (90, 60, 40), (170, 170, 175)), rng)
    width, rx, ry = _lw(f, 0.03), f.eye_rw * 1.35, f.eye_rw * 0.9
    fill = (25, 25, 35) if f.glasses == 2 else None
    for s in (-1, 1):
        ex = f.cx + s * f.eye_sep
        d.rounded_rectangle(_box(ex, f.eye_y, rx, ry), radius=ry * 0.6, outline=frame, width=width, fill=fill)
        d.line([(ex + s * rx, f.eye_y - ry * 0.5), (f.cx + s * f.w * 0.95, f.eye_y)], fill=frame, width=width)
    d.line([(f.cx - f.eye_sep + rx, f.eye_y - ry * 0.3), (f.cx + f.eye_sep - rx, f.eye_y - ry * 0.3)],
           fill=frame, width=width)


def _draw_face(layer: Image.Image, f: _Face, rng: np.random.Generator) -> None:
    """Paint back to front: hair, body, ears, head, then the features on top."""
    d = ImageDraw.Draw(layer)
    _draw_hair_back(d, f)
    _draw_body(d, f)
    _draw_ears(d, f)
    _draw_head(d, f)
    _draw_jowls(d, f)
    _draw_skin_marks(d, f, rng)
    _draw_wrinkles(d, f, rng)
    _draw_hair_top(d, f)
    _draw_eyes(d, f, rng)
    _draw_brows(d, f, rng)
    _draw_nose(d, f)
    _draw_mouth(d, f)
    _draw_glasses(d, f, rng)


# ----------------------------------------------------------------------------- photometry
@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in [-0.5, 0.5], cached because every face needs them."""
    c = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    return c[None, :], c[:, None]


def _background(n: int, rng: np.random.Generator) -> Image.Image:
    """Two-colour gradient plus a few blobs: clutter unrelated to the labels."""
    xx, yy = _grid(n)
    theta = rng.uniform(0.0, 2.0 * math.pi)
    t = np.clip(0.5 + math.cos(theta) * xx + math.sin(theta) * yy, 0.0, 1.0)[..., None]
    c1, c2 = rng.uniform(20, 235, 3), rng.uniform(20, 235, 3)
    img = Image.fromarray((c1 + (c2 - c1) * t).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 4))):
        x, y = rng.uniform(0, n, 2)
        r = rng.uniform(0.05, 0.3) * n
        colour = tuple(int(v) for v in np.clip(c1 + rng.normal(0.0, 25.0, 3), 0, 255))
        d.ellipse(_box(float(x), float(y), r, r * rng.uniform(0.5, 1.5)), fill=colour)
    return img


def _photometric(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Lighting gradient, colour cast, contrast and gaussian noise, like a cheap camera."""
    a = np.asarray(img, dtype=np.float32)
    xx, yy = _grid(a.shape[0])
    theta, strength = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.0, 0.6)
    light = 1.0 + strength * (math.cos(theta) * xx + math.sin(theta) * yy)
    gain = (1.0 + rng.normal(0.0, 0.05, 3)) * math.exp(rng.normal(0.0, 0.1))
    a = a * light[..., None] * gain.astype(np.float32)
    a = 128.0 + (a - 128.0) * rng.uniform(0.85, 1.1)
    a += rng.standard_normal(a.shape, dtype=np.float32) * rng.uniform(1.0, 6.0)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------- public API
def _check_labels(age: int, gender: int, race: int, size: int) -> None:
    if not 0 <= age <= 120:
        raise ValueError(f"age must be in 0..120, got {age}")
    if gender not in (0, 1):
        raise ValueError(f"gender must be 0 (male) or 1 (female), got {gender}")
    if race not in range(5):
        raise ValueError(f"race must be in 0..4, got {race}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")


def render_face(age: int, gender: int, race: int, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw one synthetic RGB face of ``size`` x ``size`` pixels.

    All randomness comes from ``rng``, so the same generator state gives the
    same pixels.  The face is drawn at ``SUPERSAMPLE`` times the size and
    box-downsampled, which antialiases the PIL shapes and makes the
    thin age lines survive as soft, partly visible strokes.
    """
    _check_labels(age, gender, race, size)
    n = size * SUPERSAMPLE
    face = _sample_face(age, gender, race, rng, n)
    layer = Image.new("RGBA", (n, n), (0, 0, 0, 0))
    _draw_face(layer, face, rng)
    # Box-average the supersampled drawing (classic antialiasing; 3x cheaper than Lanczos)
    # and rotate afterwards: 4x fewer pixels keeps 1000 faces within a few seconds.
    layer = layer.reduce(SUPERSAMPLE)
    centre = (face.cx / SUPERSAMPLE, face.cy / SUPERSAMPLE)
    layer = layer.rotate(face.angle, resample=Image.Resampling.BILINEAR, center=centre)
    canvas = _background(size, rng).convert("RGBA")
    canvas.alpha_composite(layer)
    return _photometric(canvas.convert("RGB"), rng)


_MAX_FACES = 10_000_000  # keeps every timestamp inside 2017


def _timestamp(seed: int, index: int) -> str:
    """17-digit UTKFace-like timestamp (yyyymmddHHMMSSfff) in 2017, unique per index.

    Strictly increasing in ``index`` (3.001 s apart), so names never collide
    within a folder; the seed only shifts the start by up to ~11.6 days.
    """
    start = datetime(2017, 1, 1) + timedelta(milliseconds=(seed * 7_919_993) % 1_000_000_000)
    t = start + timedelta(milliseconds=3001 * index)
    return t.strftime("%Y%m%d%H%M%S") + f"{t.microsecond // 1000:03d}"


def _file_names(labels: list[tuple[int, int, int]], seed: int) -> list[str]:
    return [f"{a}_{g}_{r}_{_timestamp(seed, i)}.jpg.chip.jpg" for i, (a, g, r) in enumerate(labels)]


def _read_marker(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(folder: Path, data: dict) -> None:
    """Write atomically, so a crash never leaves a marker that looks complete."""
    with written_whole(folder / MARKER_NAME) as tmp:
        tmp.write_text(json.dumps(data))


def _is_current(folder: Path, wanted: dict) -> bool:
    """True when the marker matches the request and every listed file exists."""
    old = _read_marker(folder)
    if old is None or not old.get("complete") or old.get("files") != wanted["files"]:
        return False
    if any(old.get(k) != wanted[k] for k in ("version", "n", "seed", "size")):
        return False
    present = set(os.listdir(folder))
    return all(name in present for name in wanted["files"])


def _remove_previous(folder: Path) -> None:
    """Delete only the synthetic files a previous run recorded: never touch real photos."""
    old = _read_marker(folder) or {}
    for name in old.get("files") or []:
        if isinstance(name, str) and SYNTHETIC_NAME_RE.match(name):
            (folder / name).unlink(missing_ok=True)


def write_synthetic_faces(folder: str | Path, n: int = 1000, seed: int = 0, size: int = 128) -> Path:
    """Write ``n`` synthetic JPEG faces with UTKFace-style names into ``folder``.

    Labels are ``sample_labels(n, np.random.default_rng(seed))``; face ``i`` is
    drawn with ``np.random.default_rng([seed, i])`` and saved at a random JPEG
    quality in 75..95.  The result is deterministic for ``(n, seed, size)``.

    A marker file (``MARKER_NAME``) records the parameters and file names.
    A second call with the same parameters only checks the marker and the
    files, so it is cheap; with other parameters (or a new
    ``GENERATOR_VERSION``) the previously written synthetic files are deleted
    and the folder is regenerated.  Other files in the folder are left alone.
    Not safe against two processes writing the same folder at once.
    Returns the folder as a ``Path``.
    """
    if not 0 <= n <= _MAX_FACES or seed < 0:
        raise ValueError(f"need 0 <= n <= {_MAX_FACES} and seed >= 0, got n={n}, seed={seed}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = sample_labels(n, np.random.default_rng(seed))
    wanted = {"generator": __name__, "version": GENERATOR_VERSION, "n": n, "seed": seed, "size": size,
              "files": _file_names(labels, seed)}
    if _is_current(folder, wanted):
        return folder
    _remove_previous(folder)
    _write_marker(folder, {**wanted, "complete": False})  # lets a crashed run be cleaned up
    for i, (name, (age, gender, race)) in enumerate(zip(wanted["files"], labels)):
        rng = np.random.default_rng([seed, i])
        img = render_face(age, gender, race, rng, size)
        img.save(folder / name, format="JPEG", quality=int(rng.integers(75, 96)))
    _write_marker(folder, {**wanted, "complete": True})
    return folder
