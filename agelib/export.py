"""Taking a trained model out of Python: TorchScript and ONNX files that output ages.

A deployer should not need agelib, fastai or timm to use a model. The exported
file therefore computes the *age in years*, not the head's raw logits: it wraps
the model in :class:`AgeExport`, whose forward is ``model`` followed by the
head's decoding (``head.to_age``). Two input conventions are offered:

``input="float"`` (the default)
    float32 ``(B, 3, S, S)`` RGB images already normalised with the ImageNet mean
    and std, exactly what :class:`agelib.data.loaders.BatchTransform` gives in
    evaluation. Use it to check the export against the Python model.
``input="uint8"``
    uint8 ``(B, 3, S, S)`` RGB pixels (0-255); the division by 255 and the
    normalisation happen inside the file. Easiest to deploy: decode, resize the
    face to ``S x S``, stack, run.

Either way the file says what it expects: image size, input convention, mean,
std, head kind and agelib version travel inside it (ONNX ``metadata_props``, a
TorchScript extra file ``agelib.json``); :func:`read_metadata` reads them back.

Which exporter:

* **ONNX** uses ``torch.onnx.export(..., dynamo=True)``, the ``torch.export``-based
  exporter that is PyTorch's default and supported path (the older TorchScript
  based one is deprecated). It needs ``onnxscript``. The batch dimension is
  dynamic, opset 18, and weights are stored inside the one ``.onnx`` file.
* **TorchScript** uses ``torch.jit.trace``: timm models and the hybrids are not
  scriptable, but they trace, with the batch size kept symbolic. PyTorch marks
  ``torch.jit`` as deprecated; TorchScript is still what LibTorch (C++) loads, so
  it is offered, but ONNX is the format to prefer.

A trace records one run, so an export is only trusted after
:func:`check_parity` has compared it with the Python model (the CLI's
``--check``; the tests do it for every head at batch 1 and 5).
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoints, models, settings
from .files import written_whole
from .data.loaders import IMAGENET_MEAN, IMAGENET_STD

FORMATS = ("onnx", "torchscript")
INPUTS = ("float", "uint8")
OPSET = 18
EXTRA_FILE = "agelib.json"  # the TorchScript extra file that holds the metadata
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript",
            ".torchscript": "torchscript"}


def _check_input(input: str) -> None:
    """The one check of ``input=`` for the wrapper and the metadata, which is also built alone."""
    if input not in INPUTS:
        raise ValueError(f"input must be one of {INPUTS}, not {input!r}")


def decode_ages(head: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """``head.to_age(out)``, written with operators every exporter knows.

    Only CORN needs a rewrite: its ``cumprod`` of sigmoids has no ONNX operator,
    so it becomes ``exp(cumsum(logsigmoid))``, the same product computed as a
    sum of logs (also safer against underflow). Everything else is ``to_age``.

    >>> head = models.CornHead(4, num_classes=3)  # 2 logits: P(age > 0), P(age > 1 | > 0)
    >>> decode_ages(head, torch.zeros(1, 2))  # 0.5 + 0.5 * 0.5
    tensor([0.7500])
    """
    if head.kind != "corn":
        return head.to_age(out)
    probs = torch.exp(torch.cumsum(F.logsigmoid(out.float()), dim=1))  # (B, K-1) P(age > k)
    if head.decode == "label":
        return (head.min_age + (probs > 0.5).sum(dim=1)).float()
    return head.min_age + probs.sum(dim=1)  # (B,)


class AgeExport(nn.Module):
    """An :class:`~agelib.models.AgeModel` as a function from images to ages ``(B,)``.

    With ``input="uint8"`` it takes uint8 RGB pixels and normalises them itself;
    with ``input="float"`` it takes already normalised float images. It works on
    a copy of the model, on the CPU and in evaluation mode, so exporting never
    changes the model you trained.
    """

    def __init__(self, model: models.AgeModel, input: str = "float"):
        super().__init__()
        _check_input(input)
        if not hasattr(model, "head") or not hasattr(model.head, "to_age"):
            raise ValueError("AgeExport needs an agelib AgeModel (one with a head that has "
                             "to_age); build it with models.create_model")
        self.model = copy.deepcopy(model).cpu().eval()
        self.input = input
        # the normalisation every agelib model is trained with (BatchTransform's)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if self.input == "uint8":
            x = (x.float() / 255.0 - self.mean) / self.std  # (B, 3, S, S) normalised
        return decode_ages(self.model.head, self.model(x))  # (B,) years


def metadata(model: models.AgeModel, size: int, input: str = "float") -> dict[str, str]:
    """What a deployer needs to feed the file: every value a string (ONNX requires it)."""
    cfg = model.config or models.ModelConfig()
    _check_input(input)
    layout = ("uint8 RGB pixels 0-255, normalised inside" if input == "uint8"
              else "float32 RGB, (pixel / 255 - mean) / std")
    return {
        "agelib_version": settings.agelib_version(),
        "image_size": str(size),
        "input": input,
        "input_description": f"images (B, 3, {size}, {size}), {layout}",
        "mean": json.dumps(list(IMAGENET_MEAN)),
        "std": json.dumps(list(IMAGENET_STD)),
        "output": "ages (B,) float32, in years",
        "head": model.head.kind,
        "decode": str(getattr(model.head, "decode", "value")),
        "min_age": str(cfg.min_age),
        "backbone": cfg.backbone,
    }


def _example(size: int, input: str, batch: int = 2) -> torch.Tensor:
    """A dummy input. Batch 2, not 1: exporters may fix a size-1 dimension as a constant."""
    if input == "uint8":
        return torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    return torch.randn(batch, 3, size, size)


def _check_size(size) -> int:
    if not isinstance(size, int) or isinstance(size, bool) or size < 8:
        raise ValueError(f"size must be the image side in pixels (an int >= 8), not {size!r}; "
                         "use the size the model was trained at")
    return size


def to_torchscript(model: models.AgeModel, path: str | Path, size: int,
                   input: str = "float") -> Path:
    """Trace ``model`` (as :class:`AgeExport`) and save it with its metadata."""
    path, size = Path(path), _check_size(size)
    wrapper = AgeExport(model, input)
    with warnings.catch_warnings(), torch.no_grad():
        # torch.jit warns that it is deprecated; tracer warnings come from shape checks
        # that are constant for a fixed image size. check_parity is the real test.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, _example(size, input), check_trace=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.jit.save(traced, str(path),
                       _extra_files={EXTRA_FILE: json.dumps(metadata(model, size, input))})
    return path


def to_onnx(model: models.AgeModel, path: str | Path, size: int, dynamic_batch: bool = True,
            input: str = "float", opset: int = OPSET) -> Path:
    """Export ``model`` (as :class:`AgeExport`) to one ONNX file, input ``images``, output
    ``ages``, with its metadata in ``metadata_props``; the batch size is free unless
    ``dynamic_batch=False``."""
    onnx = settings.optional_import("onnx", "onnx onnxscript", "ONNX export")

    path, size = Path(path), _check_size(size)
    if opset < 17:
        raise ValueError(f"opset {opset} is too old: LayerNorm needs opset 17 or newer")
    wrapper = AgeExport(model, input)
    dynamic = ({"images": {0: torch.export.Dim("batch", min=1, max=65536)}}
               if dynamic_batch else None)
    path.parent.mkdir(parents=True, exist_ok=True)
    program = torch.onnx.export(wrapper, (_example(size, input),), dynamo=True,
                                input_names=["images"], output_names=["ages"],
                                dynamic_shapes=dynamic, opset_version=opset, verbose=False,
                                optimize=True)  # constant folding and graph clean-up
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(model, size, input))
    onnx.save_model(proto, str(path))  # one file: weights inside (fine below 2 GB)
    return path


def _is_onnx(path: Path) -> bool:
    """True for a file that ONNX reads as a model (an earlier export, safe to replace)."""
    try:
        import onnx

        onnx.load_model(str(path), load_external_data=False)
    except Exception:  # not installed, not ONNX, unreadable: not one we may overwrite
        return False
    return True


def _format(path: Path, format: str | None) -> str:
    """The format to write or read: ``format`` when given, else the one ``path``'s suffix
    names. Both, and disagreeing, is an error: the file's name would lie about its content."""
    named = SUFFIXES.get(path.suffix.lower())
    if format and named and format != named:  # an ONNX file called *.pt: no one would guess
        raise ValueError(f"'{path.name}' names a {named} file, but --format is {format}: name "
                         f"it *{next(k for k, v in SUFFIXES.items() if v == format)}, or leave "
                         "--format out")
    fmt = format or named
    if fmt not in FORMATS:
        raise ValueError(f"cannot tell the format of '{path.name}': name the file *.onnx or "
                         f"*.pt, or give the format (--format; format= in Python), one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def load_exported(path: str | Path, format: str | None = None
                  ) -> tuple[Callable[[np.ndarray], np.ndarray], dict[str, str]]:
    """Open an exported file once: a function ``images -> ages`` and the file's metadata.

    ONNX runs in onnxruntime (CPU), TorchScript in ``torch.jit``; neither needs agelib.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exported model at '{path}'")
    if _format(path, format) == "onnx":
        ort = settings.optional_import("onnxruntime", "onnxruntime", "running an ONNX file")

        meta = read_metadata(path, "onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return (lambda x: session.run(["ages"], {"images": _as_input(x, meta)})[0]), meta
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    if not extra[EXTRA_FILE]:
        raise ValueError(f"'{path.name}' has no {EXTRA_FILE}: it was not written by agelib")

    meta = json.loads(extra[EXTRA_FILE])

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(_as_input(x, meta))).numpy()

    return run, meta


def _check_dtype(dtype: np.dtype | torch.dtype, meta: dict[str, str],
                 name: str = "this export") -> None:
    """Refuse images in the other convention than the file's: a uint8 file fed floats, or a
    float file fed uint8 pixels (taken as unnormalised floats), gives wrong ages, not an error."""
    is_uint8 = dtype in (np.uint8, torch.uint8)
    if meta.get("input") == "uint8" and not is_uint8:
        raise ValueError(f"{name} takes uint8 pixels (0-255), got {dtype} images; "
                         "see its metadata ('input_description')")
    if meta.get("input") != "uint8" and is_uint8:
        raise ValueError(f"{name} takes normalised float images, (pixel / 255 - mean) / std, "
                         f"got {dtype} pixels; normalise them (the mean and std are in its "
                         "metadata) or export with input='uint8'")


def _as_input(images: np.ndarray, meta: dict[str, str]) -> np.ndarray:
    """``images`` as the file wants them: uint8 stays uint8, floats become contiguous float32;
    images in the other convention are an error (:func:`_check_dtype`)."""
    _check_dtype(images.dtype, meta)
    if meta.get("input") == "uint8":
        return np.ascontiguousarray(images)
    return np.ascontiguousarray(images, dtype=np.float32)


def read_metadata(path: str | Path, format: str | None = None) -> dict[str, str]:
    """The metadata :func:`to_onnx` / :func:`to_torchscript` stored in an exported file.

    ``onnx`` is imported only for an ONNX file: a TorchScript export is read with torch alone.
    """
    path = Path(path)
    if path.is_file() and _format(path, format) == "onnx":  # no need to start a session
        onnx = settings.optional_import("onnx", "onnx", "reading an ONNX file")
        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False)
                .metadata_props}
    return load_exported(path, format)[1]


def _numpy(images: np.ndarray | torch.Tensor) -> np.ndarray:
    return images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)


def predict_exported(path: str | Path, images: np.ndarray | torch.Tensor,
                     format: str | None = None) -> np.ndarray:
    """Ages ``(B,)`` from an exported file, for ``images`` in the file's input convention
    (see :func:`read_metadata`)."""
    return load_exported(path, format)[0](_numpy(images))


def _normalised(x: torch.Tensor, meta: dict[str, str]) -> torch.Tensor:
    """What the Python model takes for images in the file's convention: uint8 pixels are
    normalised with the mean and std the file itself records, so the check covers them too."""
    if meta.get("input") != "uint8":
        return x.float()
    mean = torch.tensor(json.loads(meta["mean"])).view(1, 3, 1, 1)
    std = torch.tensor(json.loads(meta["std"])).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


@torch.no_grad()
def check_parity(model: models.AgeModel, path: str | Path,
                 images: torch.Tensor | np.ndarray | Sequence[torch.Tensor],
                 format: str | None = None) -> float:
    """Largest absolute difference, in years, between the file's ages and the model's.

    ``images`` (one batch or a list of batches, e.g. batch 1 and batch 5) follow the
    file's convention: normalised float, or uint8 pixels. The reference is the plain
    Python model with ``head.to_age``, so the check also covers what the export rewrote.
    """
    run, meta = load_exported(path, format)
    reference = copy.deepcopy(model).cpu().eval()
    worst = 0.0
    for batch in [images] if isinstance(images, (torch.Tensor, np.ndarray)) else images:
        x = torch.as_tensor(batch).cpu()
        _check_dtype(x.dtype, meta, f"'{Path(path).name}'")
        expected = reference.head.to_age(reference(_normalised(x, meta))).float().numpy()
        got = run(_numpy(x))
        if got.shape != expected.shape:
            raise RuntimeError(f"the export gives ages of shape {got.shape}, the model "
                               f"{expected.shape}")
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def export_checkpoint(checkpoint: str | Path, out: str | Path, format: str | None = None,
                      size: int | None = None, input: str = "float",
                      check: bool = False) -> dict:
    """Export a checkpoint file; with ``check``, also measure parity on random images.

    Returns the file's metadata plus ``path``, ``format`` and, when checked,
    ``max_abs_diff_years`` (batch 1 and batch 5 together).
    """
    source, out = checkpoints.find_checkpoint(checkpoint), Path(out)
    _check_target(out, source)
    fmt = _format(out, format)  # before loading: a wrong name costs no wait
    _check_input(input)
    model, payload = checkpoints.load_checkpoint(source)
    size = size or checkpoints.trained_size(payload, model)
    if not size:
        raise ValueError(f"'{source.name}' does not say its image size; pass --size")
    with written_whole(out) as tmp:  # a failed export leaves no half file
        (to_onnx if fmt == "onnx" else to_torchscript)(model, tmp, int(size), input=input)
    result = {"path": str(out), "format": fmt, **read_metadata(out, fmt)}
    if check:
        result["max_abs_diff_years"] = check_parity(model, out, _parity_batches(size, input), fmt)
    return result


def _check_target(out: Path, source: Path) -> None:
    """Refuse an ``out`` whose overwriting would lose something: a folder, the checkpoint
    being exported, another checkpoint, or any file that is not an earlier export."""
    if out.is_dir():
        raise ValueError(f"'{out}' is a folder: give --out a file name, "
                         f"e.g. '{out / 'model.onnx'}'")
    if out.exists() and out.resolve() == source.resolve():
        raise ValueError(f"'{out}' is the checkpoint being exported: writing the export there "
                         f"would destroy it. Give another name, e.g. {out.stem}-export{out.suffix}")
    if checkpoints.is_checkpoint(out):
        raise ValueError(f"'{out}' is an agelib checkpoint: the export would overwrite it. "
                         "Give another name, or delete that checkpoint first if it is unwanted.")
    if out.exists() and not (checkpoints.is_torchscript(out) or _is_onnx(out)):
        raise ValueError(f"'{out}' exists and is not an export: the export would overwrite it. "
                         "Give another name, or move that file first.")


def _parity_batches(size: int, input: str) -> list[torch.Tensor]:
    """Random batches of 1 and 5 images in the ``input`` convention, the same every time
    (seed 0); batch 5 also proves the batch size is not baked into the file."""
    gen = torch.Generator().manual_seed(0)
    if input == "uint8":
        return [torch.randint(0, 256, (b, 3, size, size), generator=gen, dtype=torch.uint8)
                for b in (1, 5)]
    return [torch.randn(b, 3, size, size, generator=gen) for b in (1, 5)]
