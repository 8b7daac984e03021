"""Run records: one JSON file per training run, the only source of reported numbers.

Every run writes what it was (model, head, loss, data, split, seed, mode,
epochs, pretrained or not, device, code version) and what it scored (validation
and test MAE, CS@5) to ``results/``. README tables and chapter tables are made
from these files by :func:`report_table` (``python -m agelib report``), never
typed by hand.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import platform
import re
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from . import metrics, settings

if TYPE_CHECKING:  # training imports this module, so these are for type checkers only
    from .data.sources import Faces
    from .training import TrainConfig

#: the columns of :func:`load_records`' table when there is no record yet
COLUMNS = ["tag", "backbone", "head", "loss", "pretrained", "data", "mode", "epochs",
           "image_size", "seed", "params", "valid_mae", "test_mae", "test_cs5", "device",
           "seconds", "date"]


def results_dir() -> Path:
    """``results/`` in the checkout (``AGELIB_RESULTS`` moves it)."""
    if env := os.environ.get("AGELIB_RESULTS"):
        return Path(env).expanduser()
    root = settings.repo_root()
    return (root / "results") if root else Path("results")


def code_version() -> str:
    """agelib's version plus the git commit when run from a checkout.

    ``.dirty`` when the library (``agelib/``, ``pyproject.toml``) differs from that
    commit. Notebooks, records and figures do not count: executing a chapter
    rewrites its outputs and adds records, so they always differ during a run.
    """
    version = settings.agelib_version()
    root = settings.repo_root()
    if root is None:
        return version
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "agelib", "pyproject.toml"],
                               cwd=root, text=True, capture_output=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{commit}{'.dirty' if dirty else ''}" if commit else version


def device_name(device: torch.device | str) -> str:
    """A device as records name it, kind and model (``"cuda (NVIDIA H200)"``): a CPU's
    timings and a GPU's are never read as one setting (:data:`RUN_KEYS` has it)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({platform.processor() or platform.machine()})"


def make_record(config: TrainConfig, faces: Faces, mode: settings.RunMode,
                device: torch.device | str, epochs: int, image_size: int, batch_size: int,
                best_epoch: int, seconds: float, params: int, n_train: int,
                valid: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                test_flip: np.ndarray | None = None, epochs_run: int | None = None) -> dict:
    """Everything a reader needs to trust, compare or repeat a number.

    ``test_mae`` is always the plain, single-view score; ``test_flip`` (ages
    averaged with each face's mirror image) is recorded beside it as
    ``test_mae_flip``, so test-time augmentation never hides in the headline.
    ``valid`` and ``test`` are (predicted ages, true ages) pairs.
    """
    (vp, vt), (tp, tt) = valid, test
    now = dt.datetime.now(dt.timezone.utc)
    m = config.model
    return {
        "id": f"{now:%Y%m%d-%H%M%S}-{m.backbone}-{m.head}-{config.loss}-s{config.seed}-{mode.name}",
        "tag": config.tag, "variant": config.variant, "backbone": m.backbone, "head": m.head, "loss": config.loss,
        "pretrained": bool(m.pretrained),
        "data": faces.name, "data_real": bool(faces.real), "data_fingerprint": faces.fingerprint,
        "split": f"standard seed {config.split_seed} (70/10/20, age-stratified, deduplicated)",
        "n_train": int(n_train), "n_valid": int(len(vt)), "n_test": int(len(tt)),
        "seed": config.seed, "mode": mode.name, "epochs": int(epochs),
        "epochs_run": int(epochs if epochs_run is None else epochs_run),  # < epochs: stopped early
        "best_epoch": int(best_epoch),
        "image_size": int(image_size), "batch_size": int(batch_size), "lr": config.lr,
        "schedule": config.schedule, "device": device_name(device),
        "seconds": round(float(seconds), 1), "params": int(params),
        "valid_mae": round(metrics.mae(vp, vt), 3), "test_mae": round(metrics.mae(tp, tt), 3),
        "test_cs5": round(metrics.cs_at(tp, tt, 5), 4),
        "test_mae_flip": None if test_flip is None else round(metrics.mae(test_flip, tt), 3),
        "date": now.isoformat(timespec="seconds"), "code": code_version(),
        "config": config.to_dict(),
    }


SHA1_CHARS = 12  # enough to tell 21,000 faces apart, short enough to keep files small


def predictions_table(sha1s, true, pred) -> pd.DataFrame:
    """Per-face test predictions: what error and fairness analyses are made from (the faces
    found in a photo are :func:`agelib.predict.predictions_table`)."""
    return pd.DataFrame({"sha1": [str(s)[:SHA1_CHARS] for s in sha1s],
                         "age": np.asarray(true, dtype=np.float32).round(1),
                         "pred": np.asarray(pred, dtype=np.float32).round(3)})


def save_record(record: dict, folder: str | Path | None = None,
                predictions: pd.DataFrame | None = None) -> Path:
    """Write a record as ``<id>.json`` (and its test predictions as ``predictions/<id>.csv``)."""
    folder = Path(folder) if folder else results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path, n = folder / f"{record['id']}.json", 1
    while path.exists():  # two runs in the same second (ablation grids): never overwrite
        n += 1
        path = folder / f"{record['id']}-{n}.json"
    record["id"] = path.stem
    if predictions is not None:
        record["predictions"] = f"predictions/{path.stem}.csv"
        (folder / "predictions").mkdir(exist_ok=True)
        predictions.to_csv(folder / record["predictions"], index=False)
    path.write_text(json.dumps(record, indent=2, default=_plain))
    return path


def load_predictions(record: dict | pd.Series, folder: str | Path | None = None) -> pd.DataFrame:
    """The per-face test predictions of a record (columns sha1, age, pred).

    Raises FileNotFoundError for a record written before predictions were kept.
    """
    folder = Path(folder) if folder else results_dir()
    name = record.get("predictions") if hasattr(record, "get") else None
    if not isinstance(name, str) or not (folder / name).is_file():
        raise FileNotFoundError(f"record {record.get('id')!r} has no per-face predictions; "
                                "re-run it to get them")
    return pd.read_csv(folder / name, dtype={"sha1": str})


def _plain(value: object) -> object:
    """``json.dumps``' fallback for the numpy numbers and tuples a record may hold; anything
    else is refused, so a record never holds an object it cannot read back."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in a run record")


# what every run record has, whatever wrote it (a training run or an off-the-shelf baseline)
_CORE = ("tag", "backbone", "mode", "test_mae")


def load_records(folder: str | Path | None = None) -> pd.DataFrame:
    """Every record in ``results/`` as a table (empty table when there are none).

    A file that is not a readable record (cut short by a crash, edited by hand) is
    skipped with a warning that names it, so one bad file never hides all the others.
    """
    rows = read_json_folder(Path(folder) if folder else results_dir(), "run record", _CORE)
    return pd.DataFrame(rows, columns=None if rows else COLUMNS)


def _saving_order(path: Path) -> list:
    """Sort key for file names in the order :func:`save_record` writes them: ``<id>`` before
    ``<id>-2`` before ``<id>-10`` (by plain name, ``-`` sorts before ``.`` and ``1`` before
    ``9``, so a same-second re-run would count as the older run).

    >>> sorted(["a-10.json", "a-2.json", "a.json"], key=lambda n: _saving_order(Path(n)))
    ['a.json', 'a-2.json', 'a-10.json']
    """
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", path.stem))]


def read_json_folder(folder: Path, kind: str, needs: tuple[str, ...]) -> list[dict]:
    """The JSON objects of ``folder/*.json`` (in the order they were saved) that have the
    fields ``needs``.

    Any other file (unreadable, cut short, not an object, another kind of JSON) is skipped
    with a warning that names it and says what to do: one bad file never hides the rest.
    """
    found = []
    for path in sorted(folder.glob("*.json"), key=_saving_order) if folder.is_dir() else []:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:
            warnings.warn(f"skipped {path.name}: not a readable {kind} ({err}); fix or "
                          "delete it", stacklevel=3)
            continue
        if not isinstance(row, dict):
            warnings.warn(f"skipped {path.name}: a {kind} is a JSON object", stacklevel=3)
            continue
        if missing := sorted(set(needs) - row.keys()):
            warnings.warn(f"skipped {path.name}: not a {kind} (it has no {', '.join(missing)}); "
                          f"move it out of '{folder.name}/'", stacklevel=3)
            continue
        found.append(row)
    return found


# the settings that make two runs the same model and protocol (a run's seed aside); the
# device too: a GPU's bf16 run and a CPU's float32 run are not seeds of one setting. `recipe`
# is every other training setting (learning rate, batch, schedule, augmentation, ...), so
# that two runs told apart by no variant (a learning-rate sweep) are never averaged as seeds
RUN_KEYS = ["tag", "variant", "data", "mode", "backbone", "backbone_args", "head", "loss",
            "pretrained", "image_size", "epochs", "device", "recipe"]

# config fields that are columns of their own, name a run, or change only its speed
_NOT_RECIPE = {"model", "loss", "epochs", "image_size", "tag", "variant", "seed",
               "mixed_precision", "channels_last", "compile",
               "model.backbone", "model.head", "model.pretrained", "model.backbone_args",
               "model.img_size", "model.input_norm"}
# checkpoints a run started from or learned from: their file names differ seed by seed (each
# seed's stage 1 is its own file), so only which ones were used belongs to the recipe
_FROM_FILES = {"init_from", "distill_from"}


def report_table(table: pd.DataFrame, tag: str | None = None, latest_only: bool = True
                 ) -> pd.DataFrame:
    """One row per setting (:data:`RUN_KEYS`: tag, model, head, loss, pretrained, data, mode,
    size, epochs, device and the rest of the recipe): the mean over seeds and their sample
    standard deviation (``ddof=1``, what a t-test of seed noise needs). Rows that differ
    only in their recipe name the settings that tell them apart (``recipe_note``).

    ``latest_only`` keeps one run per setting and seed (a re-run replaces the older run);
    False averages every run, re-runs of a seed included."""
    if tag is not None:
        table = table[table["tag"] == tag]
    if table.empty:
        return pd.DataFrame(columns=["runs", "test_mae", "test_cs5", "valid_mae"])
    # records written before flip averaging was measured have none: NaN, shown as a dash
    flip = table["test_mae_flip"] if "test_mae_flip" in table else np.nan
    table = table.assign(test_mae_flip=pd.to_numeric(flip, errors="coerce"))
    table = _latest_runs(table) if latest_only else _with_settings(table)
    grouped = table.groupby(RUN_KEYS, dropna=False)
    out = grouped.agg(runs=("seed", "count"), params=("params", "first"),
                      valid_mae=("valid_mae", "mean"), test_mae=("test_mae", "mean"),
                      test_mae_std=("test_mae", "std"), test_cs5=("test_cs5", "mean"),
                      test_mae_flip=("test_mae_flip", "mean"), date=("date", "max"))
    out = out.reset_index().sort_values(["tag", "test_mae"], ignore_index=True)
    return out.assign(recipe_note=_recipe_notes(out))


def per_seed(table: pd.DataFrame, tag: str | None = None) -> pd.DataFrame:
    """Test MAE by (backbone, variant) and training seed: the latest run of each seed.

    A lever's effect is honest only against the run before it with the *same* seed;
    this is the table that pairs them (NaN where a seed was not run).
    """
    if tag is not None:
        table = table[table["tag"] == tag]
    if table.empty:
        return pd.DataFrame(columns=pd.Index([], name="seed"),
                            index=pd.MultiIndex.from_tuples([], names=["backbone", "variant"]))
    latest = _latest_runs(table)
    _refuse_mixed_settings(latest)
    return latest.pivot_table(index=["backbone", "variant"], columns="seed", values="test_mae",
                              aggfunc="last")


def _refuse_mixed_settings(latest: pd.DataFrame) -> None:
    """Raise when one (backbone, variant) row of :func:`per_seed` would hold runs of one seed
    with other settings: the table would silently show only one of them."""
    clash = latest[latest.duplicated(["backbone", "variant", "seed"], keep=False)]
    if not clash.empty:
        first = clash.iloc[0]
        differ = [k for k in RUN_KEYS if clash.loc[(clash["backbone"] == first["backbone"])
                                                   & (clash["variant"] == first["variant"]), k]
                  .astype(str).nunique() > 1]
        raise ValueError(f"runs of {first['backbone']} ({first['variant'] or 'no variant'}) with "
                         f"one seed differ in {', '.join(differ)}: keep one setting (filter the "
                         "table by those columns) or give each run its own --variant")


def _with_settings(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``variant`` ("" for none), ``backbone_args`` and ``recipe`` filled in,
    sorted by date (a record without one first: it can only be older)."""
    variant = table["variant"].fillna("") if "variant" in table else ""
    configs = table.get("config", pd.Series(None, index=table.index))
    return table.assign(variant=variant, backbone_args=[backbone_args_text(c) for c in configs],
                        recipe=[json.dumps(_recipe(c), sort_keys=True) for c in configs]
                        ).sort_values("date", na_position="first", kind="stable")


def _recipe(config) -> dict:
    """A record's training settings beyond :data:`RUN_KEYS`' own columns, flat
    (``{"lr": 0.001, "model.drop_rate": 0.0, ...}``). A field a record lacks (written before
    the field existed) counts as its default, which is what such a run used."""
    if not isinstance(config, dict):
        return {}
    flat = {**_recipe_defaults(), **flat_config(config)}
    for name in _FROM_FILES:
        flat[name] = sorted(flat[name]) if isinstance(flat.get(name), dict) else bool(flat.get(name))
    return {k: v for k, v in flat.items() if k not in _NOT_RECIPE}


@functools.lru_cache(maxsize=1)
def _recipe_defaults() -> dict:
    """A default ``TrainConfig``, flat: what a record that lacks a field ran with."""
    from . import models, training  # training imports this module

    return flat_config(training.TrainConfig(model=models.ModelConfig()).to_dict())


def flat_config(config: dict) -> dict:
    """A record's config with its model's fields lifted beside the rest as ``model.<field>``:
    one flat dict, so two runs' settings compare field by field (a run's recipe here,
    chapter 08's check that each variant changes only what it names).

    >>> flat_config({"lr": 0.001, "model": {"head": "coral"}})
    {'lr': 0.001, 'model.head': 'coral'}
    """
    return {**{k: v for k, v in config.items() if k != "model"},
            **{f"model.{k}": v for k, v in (config.get("model") or {}).items()}}


def _recipe_notes(report: pd.DataFrame) -> list[str]:
    """For rows that differ only in their recipe, the settings that tell them apart
    (``"lr=0.002"``), so that the table never shows two identical-looking rows."""
    shown = [k for k in RUN_KEYS if k != "recipe"]
    notes = [""] * len(report)
    for _, rows in report.groupby(shown, dropna=False).groups.items() if len(report) else []:
        if len(rows) < 2:
            continue
        recipes = {i: json.loads(report.at[i, "recipe"]) for i in rows}
        differ = sorted({k for r in recipes.values() for k in r
                         if len({json.dumps(x.get(k)) for x in recipes.values()}) > 1})
        for i in rows:
            notes[report.index.get_loc(i)] = ", ".join(f"{k}={recipes[i].get(k)}" for k in differ)
    return notes


def _latest_runs(table: pd.DataFrame) -> pd.DataFrame:
    """One run per setting and seed: a re-run replaces the older run with the same settings."""
    return _with_settings(table).drop_duplicates(RUN_KEYS + ["seed"], keep="last")


def backbone_args_text(config) -> str:
    """A record's backbone settings as ``"k=v, k=v"`` ("" for the backbone's defaults).

    Two runs of one backbone built with other settings (a 2-block ViT, the projection
    bridge) are other models: they get their own row, and the table names the settings.

    >>> backbone_args_text({"model": {"backbone_args": {"depth": 2, "embed_dim": 80}}})
    'depth=2, embed_dim=80'
    """
    args = config.get("model", {}).get("backbone_args") if isinstance(config, dict) else None
    return ", ".join(f"{k}={v}" for k, v in sorted(args.items())) if args else ""


def model_text(backbone: str, backbone_args: str = "", variant: str = "") -> str:
    """A model as the tables name it: backbone, its settings, what the run changed.

    >>> model_text("vit_tiny_patch16_224", "depth=2", "stage 2")
    'vit_tiny_patch16_224 [depth=2] (stage 2)'
    """
    return (backbone + (f" [{backbone_args}]" if backbone_args else "")
            + (f" ({variant})" if variant else ""))


def checks_code_only(record: dict) -> bool:
    """Whether a run was trained only to check that the code works (smoke mode, or the
    synthetic faces): its ages and scores mean nothing yet, and whoever shows them says so."""
    return record.get("mode") == "smoke" or record.get("data_real") is False


# Which runs stand for each chapter's model family in a same-budget comparison: the
# chapter's usual recipe. Chapter 02 also trains other losses and heads on ResNet-18 and
# chapter 05 regularised ViT variants; chapters 06 and 07 train only their families.
FAMILY_RUNS: dict[str, dict[str, str]] = {
    "ch02": {"backbone": "resnet18", "loss": "l1"},
    "ch05": {"variant": ""},
    "ch06": {},
    "ch07": {},
}


def same_budget(report: pd.DataFrame, data: str, mode: str, image_size: int, epochs: int,
                tags=tuple(FAMILY_RUNS)) -> pd.DataFrame:
    """The rows of :func:`report_table` that a fair comparison of families may set side by side.

    Same data, mode, image size and epochs, all trained from scratch, and from each of
    the chapters ``tags`` its family's runs (:data:`FAMILY_RUNS`): chapter 02's ResNet-18
    (L1), chapter 05's plain ViT, ConvNeXt and the hybrids. Each family keeps its own usual
    recipe. Sorted by test MAE, the column these tables report.
    """
    if unknown := [t for t in tags if t not in FAMILY_RUNS]:
        raise ValueError(f"no family run is named for {unknown}: add it to "
                         f"records.FAMILY_RUNS (known: {list(FAMILY_RUNS)})")
    if report.empty:
        return report
    family = pd.Series(False, index=report.index)
    for tag in tags:
        runs = report["tag"] == tag
        for column, value in FAMILY_RUNS[tag].items():
            runs &= report[column] == value
        family |= runs
    keep = ((report["data"] == data) & (report["mode"] == mode)
            & (report["image_size"] == image_size) & (report["epochs"] == epochs)
            & ~report["pretrained"].fillna(False).astype(bool) & family)
    return report[keep].sort_values("test_mae")


def to_markdown(report: pd.DataFrame) -> str:
    """A report as a Markdown table (what README and chapters show)."""
    if report.empty:
        return "_no run records yet_"
    lines = ["| tag | data | mode | model | head | loss | pretrained | px | epochs | runs | "
             "test MAE | CS@5 | flip-averaged MAE | valid MAE | device | date |",
             "|" + "---|" * 16]  # tag: which chapter (or `train --tag`) made the runs
    for r in report.itertuples():
        std = f" ± {r.test_mae_std:.2f}" if r.runs > 1 and not np.isnan(r.test_mae_std) else ""
        model = model_text(r.backbone, getattr(r, "backbone_args", ""), r.variant)
        model += f" · {r.recipe_note}" if getattr(r, "recipe_note", "") else ""
        lines.append(f"| {r.tag} | {r.data} | {r.mode} | {model} | {r.head} | {r.loss} | "
                     f"{'yes' if r.pretrained else 'no'} | {r.image_size} | {r.epochs} | {r.runs} | "
                     f"{r.test_mae:.2f}{std} | {r.test_cs5:.3f} | {_or_dash(r.test_mae_flip)} | "
                     f"{_or_dash(r.valid_mae)} | "
                     f"{r.device} | {str(r.date)[:10]} |")
    return "\n".join(lines)


def _or_dash(value: float | None) -> str:
    """A number for a table, or a dash where there is none (a model not trained here)."""
    return "–" if value is None or value != value else f"{value:.2f}"


RESULTS_START, RESULTS_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_results(table: pd.DataFrame) -> str:
    """README's results block: full-mode runs on real data, made from the records only."""
    real = table["data_real"] if "data_real" in table else pd.Series(False, index=table.index)
    full = table[(table["mode"] == "full") & (real == True)] if not table.empty else table  # noqa: E712
    if full.empty:
        smoke = int((table["mode"] == "smoke").sum()) if not table.empty else 0
        return ("No full-mode run has been recorded yet, so there are no results to show. "
                f"The {smoke} smoke-mode records in `results/` only prove that the code runs "
                "(`python -m agelib report --mode smoke` lists them).")
    return to_markdown(report_table(full))


def readme_with_results(text: str, table: pd.DataFrame) -> str:
    """README text with the results block between its markers regenerated."""
    return replace_block(text, RESULTS_START, RESULTS_END, readme_results(table))


def replace_block(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what stands between the markers ``start`` and ``end`` replaced by ``body``.

    README's generated tables live between such markers, so regenerating one
    never touches the prose around it.

    >>> print(replace_block("a <!--s-->old<!--e--> b", "<!--s-->", "<!--e-->", "new"))
    a <!--s-->
    new
    <!--e--> b
    """
    if start not in text or end not in text:
        raise ValueError(f"README.md needs the markers {start} and {end}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"
