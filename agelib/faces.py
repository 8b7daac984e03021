"""Faces in any photo: open it safely, find every face, and crop each one like UTKFace's.

A model trained on UTKFace has only ever seen its *aligned and cropped* faces:
eyes level, near the top of a 200x200 square, mouth about two thirds down, little
forehead. Shown a whole photo, or a loosely cut face, it is asked a question it
was never trained on. So a photo goes through three steps before any age:

1. :func:`open_photo`: any file, upload or array as an upright RGB image (EXIF
   rotation applied, odd Pillow modes converted), with a clear error for files
   that are not pictures and for decompression bombs;
2. :func:`detect_faces`: MTCNN (Zhang et al. 2016, from ``facenet-pytorch``,
   whose weights ship inside the package, so it works offline) finds each face
   with a box and five landmarks (eyes, nose, mouth corners);
3. :func:`align_face`: a similarity transform (rotation, scale, shift) moves
   those five points onto where the same detector finds them on UTKFace's own
   crops (:data:`UTKFACE_LANDMARKS`), so the crop is framed like the training data.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import settings
from .data import cache

CROP_SIZE = 200  # side of an aligned crop: UTKFace's

#: Where MTCNN's five landmarks sit on UTKFace's aligned crops, as fractions of the side:
#: (x, y) of the eye on the image's left, the other eye, the nose tip, and the mouth corners.
#: Medians over random UTKFace images, measured with room around each face by
#: :func:`measure_template` (``python -m agelib landmarks``), whose record in
#: ``results/landmarks/`` says how many images, which, and when; a test checks that these
#: numbers are that record's. The eyes are level, 0.29 from the top and 0.39 of the side
#: apart, the mouth 0.70 down.
UTKFACE_LANDMARKS = np.array([[0.301, 0.294], [0.692, 0.294], [0.495, 0.526],
                              [0.319, 0.692], [0.673, 0.693]])

#: Faces are searched for on a copy whose long side is at most this many pixels: MTCNN's
#: cost grows with the pixel count, and at 1024 px it still finds faces down to 20 px
#: (2% of the long side). Crops are then cut from the full-resolution photo.
MAX_SIDE = 1024
MIN_FACE = 20  # MTCNN's smallest face, in pixels of the searched copy


class UnreadablePhoto(ValueError):
    """A file or upload that cannot be used as a photo; the message says why and what to do."""


@dataclass
class DetectedFace:
    """One face found in a photo, in the photo's own pixel coordinates."""

    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) of MTCNN's box (may reach past
    # the photo's edges when the face fills the photo; alignment uses the landmarks)
    probability: float  # MTCNN's confidence that this is a face
    landmarks: np.ndarray = field(repr=False)  # (5, 2): eyes, nose, mouth corners (x, y)
    crop: Image.Image = field(repr=False)  # CROP_SIZE square, aligned like UTKFace


def shipped_portraits() -> dict[str, Path]:
    """Public-domain portraits that come with matplotlib and scikit-image: no download.

    * ``grace_hopper``: Rear Admiral Grace Hopper, an official U.S. Navy photograph
      (a work of the U.S. federal government, so in the public domain);
    * ``astronaut``: astronaut Eileen Collins, a NASA photograph (public domain).

    Both files are inside the installed wheels, so this works offline.
    """
    from importlib import resources

    from matplotlib import cbook

    portraits = {"grace_hopper": Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))}
    astronaut = resources.files("skimage.data") / "astronaut.png"
    if astronaut.is_file():  # scikit-image ships it in the wheel (other images it downloads)
        portraits["astronaut"] = Path(str(astronaut))
    return portraits


def open_photo(source: str | Path | bytes | Image.Image | np.ndarray,
               name: str | None = None) -> Image.Image:
    """Any photo as an upright 8-bit RGB image, or :class:`UnreadablePhoto` saying why not.

    ``source`` is a file path, the bytes of an upload, a Pillow image or a uint8
    ``(H, W[, 1|3|4])`` array. EXIF orientation is applied (phones store portraits
    sideways and set a flag), so boxes match what a viewer shows. Images above
    Pillow's ``Image.MAX_IMAGE_PIXELS`` (about 89 megapixels) are refused: such
    files are usually decompression bombs, small files that expand to gigabytes.
    """
    label = name or (f"'{Path(source).name}'" if isinstance(source, (str, Path)) else "the photo")
    if isinstance(source, Image.Image):  # opened lazily, maybe: decoded here all the same
        image = _decode(source, label)
    elif isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[2] == 1:  # one channel kept as an axis
            source = source[:, :, 0]
        if (source.dtype != np.uint8 or source.ndim not in (2, 3) or 0 in source.shape
                or (source.ndim == 3 and source.shape[2] not in (3, 4))):
            raise UnreadablePhoto(f"{label}: expected a non-empty uint8 (H, W), (H, W, 3) or "
                                  f"(H, W, 4) array, got {source.dtype} {source.shape}")
        image = Image.fromarray(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise UnreadablePhoto(f"{label} is empty (0 bytes): upload the file again")
        image = _decode(io.BytesIO(bytes(source)), label)
    elif isinstance(source, (str, Path)):
        image = _decode(_checked_path(Path(source), label), label)
    else:
        raise UnreadablePhoto(f"cannot open a {type(source).__name__} as a photo: pass a file "
                              "path, the bytes of an image file, a PIL image or a uint8 array")
    return cache.to_rgb(ImageOps.exif_transpose(image))


def _checked_path(path: Path, label: str) -> Path:
    if path.is_dir():
        raise UnreadablePhoto(f"{label} is a folder; pass the image files inside it")
    if not path.is_file():
        raise UnreadablePhoto(f"no file {label}: check the path")
    if path.stat().st_size == 0:
        raise UnreadablePhoto(f"{label} is empty (0 bytes): copy or download it again")
    return path


def _decode(fp, label: str) -> Image.Image:
    """Decode fully now, so a damaged file fails here with a message, not later (``fp``: a
    file, or a Pillow image that ``Image.open`` opened lazily and has not read yet)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = fp if isinstance(fp, Image.Image) else Image.open(fp)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadablePhoto(
            f"{label} has more than the {Image.MAX_IMAGE_PIXELS:,} pixels this tool opens "
            "(such files are often decompression bombs); shrink it first") from None
    except UnidentifiedImageError:
        raise UnreadablePhoto(f"{label} is not a picture Pillow can read; use a JPEG, PNG or "
                              "WebP file") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data
        raise UnreadablePhoto(f"{label} cannot be decoded, the file looks damaged or incomplete "
                              f"({err})") from None
    return image


@lru_cache(maxsize=1)
def detector():
    """facenet-pytorch's MTCNN on the CPU, built once (its weights ship in the package)."""
    MTCNN = settings.optional_import("facenet_pytorch", "facenet-pytorch==2.5.3",
                                     "face detection").MTCNN
    return MTCNN(keep_all=True, min_face_size=MIN_FACE, device="cpu")


def detect_faces(image, min_prob: float = 0.9, max_side: int = MAX_SIDE,
                 crop_size: int = CROP_SIZE) -> list[DetectedFace]:
    """Every face MTCNN finds with probability ``>= min_prob``, left to right, each aligned.

    ``image`` is anything :func:`open_photo` takes. An empty list means no face was
    found; :func:`no_face_message` says why that happens.
    """
    if not 0.0 <= min_prob <= 1.0:
        raise ValueError(f"min_prob is a probability, between 0 and 1, not {min_prob}")
    photo = open_photo(image)
    small, scale = _shrunk(photo, max_side)
    if min(small.size) < MIN_FACE:  # too small to hold a face MTCNN can see (and it would fail)
        return []
    boxes, probs, points = detector().detect(small, landmarks=True)
    if boxes is None:
        return []
    found = []
    for box, prob, pts in zip(boxes, probs, points):
        if prob < min_prob:
            continue
        pts = np.asarray(pts, dtype=np.float64) * scale  # back to the photo's pixels
        found.append(DetectedFace(tuple(float(v) * scale for v in box), float(prob), pts,
                                  align_face(photo, pts, crop_size)))
    return sorted(found, key=lambda f: f.box[0])


def _shrunk(photo: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """A copy with the long side at most ``max_side``, and photo pixels per copy pixel."""
    scale = max(photo.size) / max_side
    if scale <= 1:
        return photo, 1.0
    size = (max(1, round(photo.width / scale)), max(1, round(photo.height / scale)))  # a strip
    small = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    return small, photo.width / size[0]


def alignment(landmarks: np.ndarray, size: int = CROP_SIZE,
              template: np.ndarray = UTKFACE_LANDMARKS) -> np.ndarray:
    """The ``(3, 3)`` similarity transform from crop pixels to photo pixels that best puts
    the five ``landmarks`` (photo pixels) on ``template`` x ``size`` (crop pixels).

    A similarity is a rotation, a uniform scale and a shift: the face keeps its shape.
    It is fitted by least squares from crop to photo because that is the direction
    Pillow's ``transform`` asks for (for each crop pixel, where to read the photo).
    """
    SimilarityTransform = settings.optional_import("skimage.transform", "scikit-image",
                                                   "face alignment").SimilarityTransform

    dst = np.asarray(template, dtype=np.float64) * size  # (5, 2) in crop pixels
    src = np.asarray(landmarks, dtype=np.float64)  # (5, 2) in photo pixels
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        fitted = SimilarityTransform.from_estimate(dst, src)
    else:
        fitted = SimilarityTransform()
        fitted = fitted if fitted.estimate(dst, src) else None
    if not fitted:
        raise ValueError("the landmarks are degenerate (all in one place); cannot align")
    return fitted.params


def align_face(photo: Image.Image, landmarks: np.ndarray, size: int = CROP_SIZE,
               template: np.ndarray = UTKFACE_LANDMARKS) -> Image.Image:
    """The ``size`` square crop of ``photo`` in which the face's landmarks sit on ``template``.

    When the crop is much smaller than the face in the photo, it is drawn larger
    first and shrunk with an antialiasing filter, so fine detail does not alias.
    """
    matrix = alignment(landmarks, size, template)  # crop (x, y, 1) -> photo (x, y, 1)
    photo_px_per_crop_px = math.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    over = int(min(4, max(1, round(photo_px_per_crop_px))))  # draw larger, then antialias
    matrix = matrix @ np.diag([1 / over, 1 / over, 1])
    crop = photo.transform((size * over, size * over), Image.Transform.AFFINE,
                           data=tuple(matrix[:2].ravel()), resample=Image.Resampling.BICUBIC)
    return crop if over == 1 else crop.resize((size, size), Image.Resampling.LANCZOS)


def landmark_template(images, pad: float = 0.25) -> np.ndarray:
    """Median landmark positions (fractions of the side) of the most confident face in each
    of ``images``: run it on UTKFace crops to re-derive :data:`UTKFACE_LANDMARKS`.

    Each image is first framed in a grey border ``pad`` of its side wide. On a crop that
    the face fills, MTCNN misplaces its landmarks (the eyes come out on the eyebrows, 0.20
    from the top instead of 0.29, and 15% too far apart); with room around the face it
    finds them where they are, and a wider border changes nothing.
    """
    points = [p for p in (_crop_landmarks(image, pad) for image in images) if p is not None]
    if not points:
        raise ValueError("no face found in any of the images; pass aligned face crops")
    return np.median(np.stack(points), axis=0)  # (5, 2)


def _crop_landmarks(image, pad: float) -> np.ndarray | None:
    """The five landmarks of the most confident face in a framed crop, as fractions of the
    crop's side; None when MTCNN finds no face."""
    photo = open_photo(image)
    border = int(round(pad * max(photo.size)))
    framed = ImageOps.expand(photo, border=border, fill=(128, 128, 128)) if border else photo
    boxes, probs, pts = detector().detect(framed, landmarks=True)
    if boxes is None:
        return None
    best = np.asarray(pts[int(np.argmax(probs))], dtype=np.float64) - border  # (5, 2)
    return best / np.array(photo.size)


def measure_template(faces, n: int = 1000, seed: int = 1, pad: float = 0.25,
                     save: bool = True) -> dict:
    """Re-derive :data:`UTKFACE_LANDMARKS`: :func:`landmark_template` on ``n`` of the
    faces, drawn with ``random.Random(seed)`` from the files in name order, and a record
    of it (data, images found, template, date, code) written to ``results/landmarks/``
    when ``save``. Slow: MTCNN runs once per image (about 40 s for 1000 on 2 cores).
    """
    import datetime as dt
    import json
    import random

    from . import records

    if n < 1:
        raise ValueError(f"n={n}: measure at least one image")
    rows = faces.samples.sort_values("file")
    picked = random.Random(seed).sample(list(rows["sha1"]), min(n, len(rows)))
    points = [p for p in (_crop_landmarks(faces.open_image(s), pad) for s in picked)
              if p is not None]
    if not points:
        raise ValueError(f"no face found in any of the {len(picked)} images drawn from {faces.name}")
    now = dt.datetime.now(dt.timezone.utc)
    record = {"data": faces.name, "data_real": bool(faces.real),
              "data_fingerprint": faces.fingerprint, "n_images": len(picked),
              "n_found": len(points), "seed": seed, "pad": pad,
              "template": np.round(np.median(np.stack(points), axis=0), 4).tolist(),
              "date": now.isoformat(timespec="seconds"), "code": records.code_version()}
    if save:
        folder = records.results_dir() / "landmarks"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{now:%Y%m%d-%H%M%S}-{faces.name}.json"
        path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def latest_template_record(data: str = "UTKFace") -> dict | None:
    """The newest :func:`measure_template` record of ``data`` in the results, if any (by
    the record's own ``data``: a file name ending in ``-UTKFace`` may be ``my-UTKFace``'s)."""
    from . import records

    found = records.read_json_folder(records.results_dir() / "landmarks", "landmark record",
                                     ("data", "template", "date"))
    ours = sorted((r for r in found if r["data"] == data), key=lambda r: r["date"])
    return ours[-1] if ours else None


def no_face_message(name: str = "the photo", min_prob: float = 0.9) -> str:
    """What to say when a photo holds no face the detector is sure of."""
    return (f"no face found in {name} (none with detector probability >= {min_prob}). "
            f"Faces smaller than about {MIN_FACE / MAX_SIDE:.0%} of the photo's long side, "
            "seen from the side, or mostly hidden are missed; try a closer, frontal photo.")
