"""Checkpoints that rebuild their own model: weights plus the config that made them.

A checkpoint holds only tensors and plain Python values (dicts, lists, strings,
numbers), so it loads with ``torch.load(weights_only=True)``, which refuses to
run code hidden in a file downloaded from somewhere.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from . import models
from .files import written_whole

FORMAT = "agelib-checkpoint-1"


def save_checkpoint(model: models.AgeModel, path: str | Path, train_config: dict | None = None,
                    record: dict | None = None, extra: dict | None = None) -> Path:
    """Write ``model`` with its config (and optionally how it was trained and scored).

    ``extra`` holds any other plain values to keep with the weights (for example
    the test predictions, so a reloaded model can be analysed without re-running).
    """
    if model.config is None:
        raise ValueError("the model has no config: build it with models.create_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "model_config": model.config.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "train_config": train_config or {}, "record": record or {}, "extra": extra or {}}
    with written_whole(path) as tmp:  # never half a checkpoint under the real name
        torch.save(payload, tmp)
    return path


def checkpoint_path(name: str | Path) -> Path:
    """A checkpoint named in a config: a bare name lives in ``<data home>/checkpoints``.

    Configs (and so run records) name cached checkpoints by file name only, so
    no machine's folder layout ends up in a record. ``./NAME.pt`` means the current
    folder (``Path`` would drop the ``./`` and read it as a bare name).
    """
    from . import settings

    path = Path(name)
    here = isinstance(name, str) and name.startswith(("./", ".\\"))
    return path if here or path.is_absolute() or path.parent != Path(".") else (
        settings.data_home() / "checkpoints" / path)


def find_checkpoint(name: str | Path) -> Path:
    """The file a checkpoint name means: a path as given (the current folder first), or
    else where :func:`checkpoint_path` puts a bare name, as ``train --out NAME.pt`` does."""
    path, stored = Path(name), checkpoint_path(name)
    if not path.is_file() and stored.is_file():
        return stored
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at '{path}' (a bare file name is also looked "
                                f"for in '{stored.parent}').{_close_names(path.name, stored.parent)} "
                                "Train one with `python -m agelib train --out NAME.pt`.")
    return path


def _close_names(name: str, folder: Path) -> str:
    """A typo's likely meaning among the checkpoints in ``folder``, as a sentence (or "")."""
    import difflib

    stems = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
    close = difflib.get_close_matches(Path(name).stem, stems, n=3, cutoff=0.6)  # not ".pt" alike
    return f" Did you mean {', '.join(c + '.pt' for c in close)}?" if close else ""


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                    ) -> tuple[models.AgeModel, dict]:
    """Rebuild the model of a checkpoint; return it (in eval mode) and the whole payload.

    Raises ValueError, saying what is wrong, for a file that is not an agelib
    checkpoint or whose weights do not fit its config.
    """
    path = find_checkpoint(path)
    if is_torchscript(path):  # torch.load would hand it to torch.jit.load
        raise ValueError(f"'{path.name}' is an exported TorchScript model, not a checkpoint: "
                         "exports are for running elsewhere (agelib.export.load_exported); "
                         "give the checkpoint it was exported from.")
    if path.suffix.lower() == ".onnx":
        raise ValueError(f"'{path.name}' is an exported ONNX model, not a checkpoint: exports "
                         "are for running elsewhere (agelib.export.load_exported); give the "
                         "checkpoint it was exported from.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and unpickling-policy errors all mean "unreadable"
        # torch's own text suggests weights_only=False, the very protection kept here: not shown
        raise ValueError(f"'{path.name}' is not a readable checkpoint ({type(err).__name__}); "
                         "agelib checkpoints are written by `python -m agelib train --out`, "
                         "and only their weights and settings are ever read.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"'{path.name}' is not an agelib checkpoint (no '{FORMAT}' marker); "
                         "train one with `python -m agelib train`.")
    lacking = [k for k in ("model_config", "state_dict") if not isinstance(payload.get(k), dict)]
    if lacking:
        raise ValueError(f"'{path.name}' is a damaged agelib checkpoint: it has no "
                         f"{' and no '.join(lacking)}. Train it again with `python -m agelib "
                         "train --out`.")
    config = models.ModelConfig.from_dict(payload["model_config"])
    model = models.create_model(config, pretrained=False)  # the weights come from the file
    if misfit := weights_misfit(model.state_dict(), payload["state_dict"]):
        raise ValueError(f"'{path.name}': the weights do not fit the saved config "
                         f"({config.backbone}): {misfit}. Was the file edited, or saved by "
                         "another version of agelib or timm?")
    model.load_state_dict(payload["state_dict"])
    model.config.pretrained = config.pretrained  # how it started, for the record
    payload.setdefault("extra", {})
    return model.eval(), payload


def trained_size(payload: dict, model: models.AgeModel) -> int | None:
    """The image side a checkpoint's model was trained at: from its train config, its
    record, or (a bare :func:`save_checkpoint` of a ViT or hybrid) the model's config."""
    size = (payload.get("train_config", {}).get("image_size")
            or payload.get("record", {}).get("image_size") or model.config.img_size)
    return int(size) if size else None


def weights_misfit(expected: dict, found: dict) -> str:
    """What keeps ``found`` weights from loading into a model whose own are ``expected``
    (tensors missing, unexpected, or of another shape, a few named); "" when they fit."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [f"{k} {tuple(found[k].shape)} for {tuple(v.shape)}" for k, v in expected.items()
                if k in found and tuple(getattr(found[k], "shape", ())) != tuple(v.shape)]
    parts = [f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})"
             for keys, what in ((missing, "missing"), (unexpected, "unexpected"),
                                (reshaped, "of another shape")) if keys]
    return "; ".join(parts)


def is_checkpoint(path: str | Path) -> bool:
    """True when ``path`` is a file holding an agelib checkpoint (read safely, weights only)."""
    path = Path(path)
    if not path.is_file() or is_torchscript(path):
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # TorchScript, ONNX, anything else: not one of ours
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def is_torchscript(path: str | Path) -> bool:
    """True for a TorchScript archive (a zip holding compiled code), which shares the
    ``.pt`` suffix with checkpoints."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())
