"""The inference demo: a photo in, the same photo with boxes and ages out.

:func:`annotate` is a plain function (tested like any other); :func:`age_widget`
only wires it to an upload button and a list of portraits for use in Jupyter.
"""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

if TYPE_CHECKING:
    import ipywidgets

from . import faces, predict, settings


def annotate(photo: str | Path | bytes | Image.Image | np.ndarray, models, level: float = 0.8,
             min_prob: float = 0.9) -> tuple[Image.Image, pd.DataFrame]:
    """``photo`` with every face boxed and labelled, and a table with one row per face.

    ``models``: what :func:`agelib.predict.load_estimators` takes (checkpoint paths,
    models, training results). No face gives the photo unchanged and an empty
    table; an unreadable photo raises :class:`agelib.faces.UnreadablePhoto`.
    """
    image = faces.open_photo(photo)
    predictions = predict.predict_faces(models, image, level=level, min_prob=min_prob)
    return predict.draw_predictions(image, predictions), predict.predictions_table(predictions)


def _uploaded(value) -> tuple[str, bytes] | None:
    """(name, bytes) of the file in a ``FileUpload`` value: a tuple of dicts in ipywidgets 8,
    a dict of name -> dict in ipywidgets 7 (Colab's)."""
    items = list(value.values()) if isinstance(value, dict) else list(value)
    if not items:
        return None
    item = items[-1]
    name = item.get("name") or item.get("metadata", {}).get("name", "the upload")
    return name, bytes(item["content"])


def _png(image: Image.Image, max_side: int = 640) -> bytes:
    """``image`` as PNG bytes for the widget, shrunk to fit ``max_side`` (a phone photo would
    fill the notebook); the caller's image is left at full size."""
    image = image.copy()
    image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def summary(name: str, table: pd.DataFrame, level: float = 0.8, min_prob: float = 0.9) -> str:
    """HTML that goes under the picture: the faces table, what the interval is, or why none."""
    if table.empty:
        return f"<p>{html.escape(faces.no_face_message(name, min_prob))}</p>"
    kind = table["interval"].iloc[0]
    interval = (f"no interval: {predict.INTERVAL_KINDS[kind]}" if kind == "none" else
                f"{level:.0%} intervals: {predict.INTERVAL_KINDS[kind]}")
    return (f"<p>{html.escape(f'{name}: {len(table)} face(s); {interval}')}</p>"
            + table.to_html(index=False))


def age_widget(models, level: float = 0.8, min_prob: float = 0.9) -> ipywidgets.VBox:
    """An ipywidgets panel: upload a photo or pick a shipped portrait, see boxes and ages.

    The models are loaded once here, so each photo costs only detection and prediction.
    """
    widgets = settings.optional_import("ipywidgets", "ipywidgets", "the demo widget")

    estimators = predict.load_estimators(models)
    portraits = faces.shipped_portraits()
    upload = widgets.FileUpload(accept="image/*", multiple=False, description="Upload a photo")
    choice = widgets.Dropdown(options=["(pick a portrait)", *portraits], description="or")
    picture = widgets.Image(format="png")
    message = widgets.HTML()
    warning = predict.caveat(estimators)  # a smoke model's ages: said above every answer
    warning = f"<p><b>Note:</b> {html.escape(warning)}</p>" if warning else ""

    def show(source, name: str) -> None:
        try:
            photo = faces.open_photo(source, name=f"'{name}'")  # errors name the file
            image, table = annotate(photo, estimators, level=level, min_prob=min_prob)
        except faces.UnreadablePhoto as err:
            picture.value = b""
            message.value = f"<b>Cannot use this file:</b> {html.escape(str(err))}"
            return
        picture.value = _png(image)
        message.value = warning + summary(name, table, level, min_prob)

    def on_upload(change) -> None:
        got = _uploaded(change["new"])
        if got:
            show(got[1], got[0])

    def on_choice(change) -> None:
        if change["new"] in portraits:
            show(portraits[change["new"]], change["new"])

    upload.observe(on_upload, names="value")
    choice.observe(on_choice, names="value")
    return widgets.VBox([widgets.HBox([upload, choice]), picture, message])
