"""The command line: ``python -m agelib COMMAND`` (or ``agelib COMMAND``).

Commands:

* ``info``: versions, device, run mode and which data a run would use;
* ``data DIR``: the parse/deduplication report of a UTKFace-style folder (``--json``);
* ``download``: fetch and check UTKFace (or unpack an archive you downloaded);
* ``pack``: write the decoded dataset as one small ``.tar`` to carry elsewhere;
* ``train``: train a model on the standard split, write a checkpoint and a run record;
* ``evaluate``: n, MAE and CS@5 of a checkpoint on any folder of UTKFace-named images;
* ``report``: the results tables, made from the run records;
* ``models``: the registered model configurations and their parameter counts;
* ``links``: show or rewrite the Colab links and install cells from ``settings.REPOSITORY``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

from . import course, settings

PACKAGES = ("agelib", "torch", "torchvision", "timm", "fastai", "numpy", "pandas", "pillow",
            "scikit-learn", "matplotlib")


def environment_info() -> dict:
    """Versions, device, mode and data, as shown by ``info`` and stated in run records."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from .data import sources

    try:
        found = sources.find_data()
        data = ({"dataset": "synthetic (no UTKFace found)", "location": None} if found is None
                else {"dataset": "pack" if found.is_file() else "UTKFace folder",
                      "location": found.name})
    except FileNotFoundError as err:
        data = {"dataset": "missing", "error": str(err)}
    device = settings.get_device()
    info = {"versions": versions, "device": str(device), "mode": settings.run_mode().name,
            "data": data}
    if device.type == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def cmd_info(args) -> int:
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
          + (f"\n  {data['error']}" if "error" in data else ""))
    return 0


def cmd_data(args) -> int:
    from .data import utkface

    files, report = utkface.scan_folder(args.folder)
    utkface.deduplicate(files, report)
    if args.json:
        out = report.to_dict()
        groups = utkface.duplicate_groups(files)
        out["conflicting_groups"] = [
            {"files": g.files, "ages": g.ages} for g in groups[groups.age_conflict].itertuples()]
        print(json.dumps(out, indent=2))
    else:
        print(report)
    return 0


def cmd_download(args) -> int:
    from .data import download

    dest = Path(args.dest) if args.dest else settings.data_home()
    download.download_utkface(dest, url=args.url, archive=args.archive)
    return 0


def cmd_pack(args) -> int:
    from .data import cache, sources

    faces = sources.load_faces(args.source)
    images = faces.images(args.size)
    out = Path(args.out or settings.data_home() / "packs" / f"{faces.name}-{args.size}px.tar")
    cache.write_pack(faces.samples, images, out, quality=args.quality, name=faces.name,
                     real=faces.real)
    print(f"wrote {out.name}: {len(faces.samples)} images at {args.size} px, "
          f"{out.stat().st_size / 2**20:.1f} MiB")
    return 0


def cmd_models(args) -> int:
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


def cmd_links(args) -> int:
    if args.write:
        changed = course.write_links()
        print("rewrote: " + (", ".join(changed) if changed else "nothing (already up to date)"))
    else:
        print(course.chapter_table())
    return 0


def cmd_train(args) -> int:
    from . import models, training

    extra = dict(_key_value(a) for a in args.backbone_arg or [])
    fields = {"head": args.head, "pretrained": args.pretrained,
              "backbone_args": extra or None}
    model = (models.named_config(args.model, **fields) if args.model in models.REGISTRY
             else models.ModelConfig(backbone=args.model, **fields))
    config = training.TrainConfig(model=model, loss=args.loss, epochs=args.epochs, lr=args.lr,
                                  batch_size=args.batch_size, image_size=args.image_size,
                                  schedule=args.schedule, seed=args.seed, tag=args.tag)
    sizes = {"epochs": args.epochs, "image_size": args.image_size, "batch_size": args.batch_size}
    mode = settings.run_mode(**{k: v for k, v in sizes.items() if v})  # describe what runs
    print(mode.describe())
    result = training.train_age_model(config, mode=mode, checkpoint=args.out)
    r = result.record
    print(f"{r['backbone']} + {r['head']} head, {r['loss']} loss, {r['epochs']} epochs on "
          f"{r['data']} ({r['mode']}): valid MAE {r['valid_mae']:.2f}, test MAE "
          f"{r['test_mae']:.2f}, CS@5 {r['test_cs5']:.3f}, {r['seconds']:.0f} s on {r['device']}")
    if result.checkpoint:
        print(f"checkpoint: {result.checkpoint}")
    return 0


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it can be (numbers, true/false), else text."""
    if "=" not in text:
        raise ValueError(f"--backbone-arg expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def cmd_evaluate(args) -> int:
    from . import inference

    scores = inference.evaluate_folder(args.checkpoint, args.images)
    if args.json:
        print(json.dumps({k: scores[k] for k in ("n", "mae", "cs5")}))
    else:
        print(f"n {scores['n']}  MAE {scores['mae']:.3f}  CS@5 {scores['cs5']:.3f}")
        for s in scores["skipped"]:
            print(f"  skipped {s['file']}: {s['reason']}")
    return 0


def cmd_report(args) -> int:
    from . import records

    if args.write_readme:
        readme = settings.repo_root() / "README.md"
        readme.write_text(records.readme_with_results(readme.read_text(encoding="utf-8"),
                                                      records.load_records(args.results)),
                          encoding="utf-8")
        print("README.md results updated from the run records")
        return 0
    table = records.report_table(records.load_records(args.results), tag=args.tag)
    if args.mode:
        table = table[table["mode"] == args.mode]
    print(records.to_markdown(table) if not args.json
          else table.to_json(orient="records", indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agelib", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, device, mode and data found")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="parse/deduplication report of a UTKFace-style folder")
    p.add_argument("folder", help="folder of UTKFace-named images")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("download", help="fetch and check UTKFace (non-commercial research only)")
    p.add_argument("--dest", help="folder to put UTKFace/ in (default: the data home, data/)")
    p.add_argument("--url", default=None, help="another URL of UTKFace.tar.gz")
    p.add_argument("--archive", help="a UTKFace.tar.gz you downloaded yourself")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("pack", help="write the dataset as one small .tar of WebP images")
    p.add_argument("--source", default=None, help="folder or 'synthetic' (default: AGELIB_DATA)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    p.add_argument("--quality", type=int, default=90, help="WebP quality (default 90)")
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
    p.add_argument("--epochs", type=int, help="default: the run mode's")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, help="default: the run mode's")
    p.add_argument("--image-size", type=int, help="default: the run mode's")
    p.add_argument("--schedule", default="one_cycle", help="one_cycle|warmup_cosine|constant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="cli", help="label for reports")
    p.add_argument("--out", help="checkpoint to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="n, MAE and CS@5 of a checkpoint on a labelled folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", required=True, help="folder of UTKFace-named images")
    p.add_argument("--json", action="store_true", help="print {n, mae, cs5}")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="tables of results from the run records")
    p.add_argument("--results", help="records folder (default results/)")
    p.add_argument("--tag", help="only runs with this tag")
    p.add_argument("--mode", choices=["smoke", "full"], help="only this mode")
    p.add_argument("--json", action="store_true")
    p.add_argument("--write-readme", action="store_true",
                   help="regenerate README.md's results block from the records")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("models", help="registered model configurations and their sizes")
    p.add_argument("--json", action="store_true", help="a list of {name, params, ...}")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("links", help="Colab links from settings.REPOSITORY")
    p.add_argument("--write", action="store_true", help="rewrite README.md and notebooks")
    p.set_defaults(func=cmd_links)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "url", "unset") is None:
        from .data import download

        args.url = download.URL
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
