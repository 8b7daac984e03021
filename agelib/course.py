"""The course's table of contents and the links made from ``settings.REPOSITORY``.

README's chapter table and every notebook's Colab install cell are generated
from here, so publishing the course is one edit (``settings.REPOSITORY``)
followed by ``python -m agelib links --write``; a test fails while they disagree.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .files import written_whole

COLAB = "https://colab.research.google.com/github/{repo}/blob/main/notebooks/{file}"
TABLE_START, TABLE_END = "<!-- chapters:start -->", "<!-- chapters:end -->"
REPO_LINE = re.compile(r'^(REPOSITORY = )"[^"]*"(.*)$', re.MULTILINE)


@dataclass(frozen=True)
class Chapter:
    file: str
    title: str
    summary: str


CHAPTERS = (
    Chapter("00_setup.ipynb", "Setup", "check the environment, find or fetch the data, "
            "smoke vs full mode"),
    Chapter("01_dataset_exploration.ipynb", "The dataset", "UTKFace seen properly: skew, groups, "
            "duplicates, label noise, the split"),
    Chapter("02_cnn_regression.ipynb", "CNN regression", "a ResNet regressor; L1, MSE and the "
            "adaptive loss"),
    Chapter("03_classification.ipynb", "Age as classes", "softmax expectation (DEX), label "
            "distributions, calibration"),
    Chapter("04_ordinal_coral.ipynb", "Ordinal regression", "CORAL from scratch, CORN, rank "
            "consistency"),
    Chapter("05_vit.ipynb", "Vision Transformer", "patches, tokens, position embeddings"),
    Chapter("06_convnext.ipynb", "ConvNeXt", "what a modern CNN changed"),
    Chapter("07_convnext_vit_hybrid.ipynb", "ConvNeXt-ViT hybrid", "the paper's model, "
            "built step by step"),
    Chapter("08_ablations.ipynb", "Ablations", "what each part of the hybrid is worth"),
    Chapter("09_gradcam.ipynb", "Grad-CAM", "where each model looks"),
    Chapter("10_errors_and_fairness.ipynb", "Errors and fairness", "who the models fail"),
    Chapter("11_inference_demo.ipynb", "Inference demo", "your own photo, faces detected, "
            "ages with intervals"),
)


def notebooks_dir() -> Path:
    """The chapters' folder of the course checkout (an installed agelib has none)."""
    root = settings.repo_root()
    if root is None:
        raise FileNotFoundError("links need the course checkout (README.md and notebooks/)")
    return root / "notebooks"


def chapter_table(repo: str | None = None) -> str:
    """README's chapter table: a Colab link for each chapter that exists."""
    repo = repo or settings.REPOSITORY
    folder = notebooks_dir()
    rows = ["| # | Chapter | What you will do | Open |", "|---|---|---|---|"]
    for ch in CHAPTERS:
        number = ch.file[:2]
        if (folder / ch.file).exists():
            colab = COLAB.format(repo=repo, file=ch.file)
            link = f"[notebook](notebooks/{ch.file}) · [Open in Colab]({colab})"
        else:
            link = "coming soon"
        rows.append(f"| {number} | {ch.title} | {ch.summary} | {link} |")
    return "\n".join(rows)


def readme_with_table(text: str, repo: str | None = None) -> str:
    """README text with the generated table between its markers."""
    if TABLE_START not in text or TABLE_END not in text:
        raise ValueError(f"README.md needs the markers {TABLE_START} and {TABLE_END}")
    head, rest = text.split(TABLE_START, 1)
    _, tail = rest.split(TABLE_END, 1)
    return f"{head}{TABLE_START}\n{chapter_table(repo)}\n{TABLE_END}{tail}"


def notebook_with_repo(text: str, repo: str | None = None) -> str:
    """A notebook's JSON text with its install cell's ``REPOSITORY = "..."`` line updated."""
    repo = repo or settings.REPOSITORY
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            new = REPO_LINE.sub(rf'\g<1>"{repo}"\g<2>', source)
            if new != source:
                cell["source"] = new.splitlines(keepends=True)
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # as nbformat


def write_links(repo: str | None = None) -> list[str]:
    """Rewrite README.md and the notebooks from ``settings.REPOSITORY``; return what changed."""
    folder = notebooks_dir()
    changed = []
    readme = folder.parent / "README.md"
    targets = [(readme, readme_with_table)] + [
        (nb, notebook_with_repo) for nb in sorted(folder.glob("*.ipynb"))]
    for path, render in targets:
        old = path.read_text(encoding="utf-8")
        new = render(old, repo)
        if new != old:
            path.write_text(new, encoding="utf-8")
            changed.append(path.name)
    return changed


# --------------------------------------------------------------------------- dataset photos
#: The tag of a cell that shows single UTKFace photos. UTKFace's licence allows research use
#: but not redistribution, so a chapter run on the real faces is saved without those
#: pictures: the learner sees them when running the cell on their own copy of the data.
DATASET_FACES = "dataset-faces"
LEFT_OUT = ("[The picture is left out of the saved notebook: it shows UTKFace photos, whose "
            "licence does not allow redistributing them. Run the cell on your copy of the data "
            "to see it.]\n")
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml")


def leave_out_dataset_faces(nb: dict) -> int:
    """Drop the pictures of every cell tagged :data:`DATASET_FACES` from ``nb`` (a notebook
    as JSON or ``nbformat`` node), each replaced by a line that says why; return how many.

    Tables and printed text stay: only the photos may not travel.
    """
    dropped = 0
    for cell in nb["cells"]:
        if DATASET_FACES not in cell.get("metadata", {}).get("tags", []):
            continue
        kept = [o for o in cell.get("outputs", [])
                if not any(t in o.get("data", {}) for t in IMAGE_TYPES)]
        if len(kept) < len(cell.get("outputs", [])):
            dropped += len(cell["outputs"]) - len(kept)
            note = type(cell)(output_type="stream", name="stdout", text=LEFT_OUT)  # same kind
            cell["outputs"] = [note, *kept]  # of node (dict or nbformat's) as the cell's own
    return dropped


# --------------------------------------------------------------------------- running the course
COURSE_START, COURSE_END = "<!-- course-run:start -->", "<!-- course-run:end -->"
#: how README's course-run table marks a time that is not a first run's (see :func:`_mark`)
WARM, UNKNOWN = "†", "?"

# one chapter in a fresh kernel, outputs written back in place (nbclient: what nbval uses too);
# on real faces, without the cells' pictures of single UTKFace photos
_EXECUTE = """
import sys, nbformat
from nbclient import NotebookClient
path, timeout, real = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
nb = nbformat.read(path, as_version=4)
try:
    NotebookClient(nb, timeout=timeout, kernel_name="python3").execute()
finally:
    if real:
        from agelib.course import leave_out_dataset_faces
        leave_out_dataset_faces(nb)
    nbformat.write(nb, path)
"""


def run_chapters(files: list[str] | None = None, full: bool = False, timeout: int = 1800,
                 save: bool = True, epochs: int | None = None) -> dict:
    """Execute chapters in order, in place, timing each; write a course-run record.

    Each chapter runs in a fresh kernel (``nbclient``, as nbval does) with
    ``AGELIB_SMOKE`` set for the mode (and ``AGELIB_EPOCHS`` when ``epochs`` is
    given), so its outputs are those of a real run of the mode it states. The
    record (``results/course/<date>-<mode>.json``) holds the wall time of every
    chapter, the device and the date, and is rewritten after each chapter, so a
    run cut short (a time limit, a crash) still keeps what it measured. Each
    chapter's entry also counts the models it loaded (``training.load_or_train``) or
    found recorded (``training.recorded_run``) instead of training them, that were
    trained before the run began: such a chapter is faster than a learner's first
    run of it. README's "course run" table is made from these records.
    """
    from . import records

    folder = notebooks_dir()
    wanted = _chosen_chapters(folder, files)
    env = kernel_env(full, epochs)
    mode = settings.SMOKE if not full else settings.FULL
    now = datetime.datetime.now(datetime.timezone.utc)
    real = "1" if _real_faces(env) else "0"
    run = {"mode": mode.name, "epochs": int(env.get("AGELIB_EPOCHS") or mode.epochs),
           "device": records.device_name(settings.get_device()),
           "data": "real" if real == "1" else "synthetic",
           "date": now.isoformat(timespec="seconds"), "code": records.code_version(),
           "total_seconds": 0.0, "chapters": []}
    path = records.results_dir() / "course" / f"{now:%Y%m%d-%H%M%S}-{mode.name}.json"
    for name in wanted:
        chapter = _run_chapter(name, folder, env, timeout, real, since=now)
        run["chapters"].append(chapter)
        run["total_seconds"] = round(sum(c["seconds"] for c in run["chapters"]), 1)
        reused = chapter["models_reused"]
        print(f"{name:<34} {chapter['seconds']:7.1f} s  {'ok' if chapter['ok'] else 'FAILED'}"
              + (f"  (reused {reused} model(s) trained before this run)" if reused else ""),
              flush=True)
        if save:
            _write_record(run, path)
    return run


def _chosen_chapters(folder: Path, files: list[str] | None) -> list[str]:
    """The chapters' notebooks to run, in course order: all of them, or those whose names
    start with one of ``files`` ("03", "03_classification"); a name that matches none is an
    error, not a run that silently skips it."""
    present = [ch.file for ch in CHAPTERS if (folder / ch.file).exists()]
    if not files:
        return present
    unknown = [f for f in files if not any(p.startswith(f) for p in present)]
    if unknown:
        raise ValueError(f"no chapter matches {unknown}; chapters: {present}")
    return [p for p in present if any(p.startswith(f) for f in files)]


def _write_record(run: dict, path: Path) -> None:
    """Save a course-run record whole or not at all: a run killed mid-write keeps its last one."""
    with written_whole(path) as partial:
        partial.write_text(json.dumps(run, indent=2))


def _run_chapter(name: str, folder: Path, env: dict, timeout: int, real: str,
                 since: datetime.datetime) -> dict:
    """One chapter executed in a fresh kernel: its entry in the course record."""
    import subprocess
    import sys
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="agelib-course-") as tmp:
        log = Path(tmp) / "reused"  # the kernel notes each model it reuses here
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _EXECUTE, name, str(timeout), real],
                              cwd=folder, env={**env, settings.REUSE_LOG: str(log)},
                              capture_output=True, text=True)
        seconds = round(time.perf_counter() - start, 1)
        return {"notebook": name, "seconds": seconds, "ok": done.returncode == 0,
                "error": None if done.returncode == 0 else _plain(done.stderr)[-600:],
                "models_reused": trained_before(log, since)}


def _plain(text: str) -> str:
    """A kernel's error without its terminal colours (escape codes are most of a coloured
    traceback's characters, and unreadable in a record)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text).strip()


def kernel_env(full: bool, epochs: int | None = None) -> dict:
    """The environment the chapters' kernels run in: the run mode, the training length, and
    the user's paths made absolute (the kernels run in ``notebooks/``, where a relative
    ``AGELIB_DATA=my-data`` would name another folder)."""
    from .data import sources

    env = {**os.environ, "AGELIB_SMOKE": "0" if full else "1"}
    for name in ("AGELIB_DATA", "AGELIB_HOME", "AGELIB_RESULTS"):
        if env.get(name) and not sources.names_synthetic(env[name]):  # a name, not a path
            env[name] = str(Path(env[name]).expanduser().resolve())
    if epochs is not None:
        env["AGELIB_EPOCHS"] = str(epochs)
    env.pop("MPLBACKEND", None)  # "Agg" would keep every figure out of the saved outputs
    return env


def trained_before(log: Path, start: datetime.datetime) -> int:
    """How many of the reuses a chapter noted in ``log`` (one training date per line, see
    ``training.note_reuse``) were of models trained before ``start`` (an aware datetime):
    a model an earlier chapter of the same run trained is the course working as designed;
    one from an earlier run saved this run its training time. A missing date counts as
    earlier, and a date without a time zone is UTC's (as records write them)."""
    if not log.is_file():
        return 0
    earlier = 0
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            when = datetime.datetime.fromisoformat(line.strip())
        except ValueError:  # no date (a record from before records were dated)
            earlier += 1
            continue
        earlier += (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)) < start
    return earlier


def _real_faces(env: dict) -> bool:
    """Whether the chapters will read real faces: the data the kernels' environment finds
    (``AGELIB_DATA`` or the usual places) is not the synthetic set."""
    from .data import sources

    asked = env.get("AGELIB_DATA") or None
    try:
        found = None if sources.names_synthetic(asked) else sources.find_data(asked)
        return found is not None and sources.load_faces(found, verbose=False).real
    except (OSError, ValueError):  # missing or unreadable: the chapters will say so themselves,
        return True  # and leaving photos out loses nothing


def load_course_runs(folder: Path | None = None) -> list[dict]:
    """Every course-run record, oldest first."""
    from . import records

    folder = folder or records.results_dir() / "course"
    return records.read_json_folder(folder, "course-run record", ("mode", "device", "chapters"))


def latest_times(runs: list[dict], mode: str) -> dict | None:
    """Each chapter's latest time in ``mode`` on the device, and at the training length, of
    the latest run of that mode on the real faces.

    A full run on one GPU may be split over several calls (one lease's commands
    are limited to minutes each), each writing its own record: this stitches
    them back into one course, chapter by chapter, and never mixes devices or
    training lengths (a chapter re-run at 2 epochs is not part of a 20-epoch course).
    """
    # the course's timings are of the real faces: a run on the synthetic ones is a check
    # ...and a run with no chapter (stopped before its first, or emptied by hand) says nothing
    runs = [r for r in runs
            if r["mode"] == mode and r.get("data", "real") == "real" and r.get("chapters")]
    if not runs:
        return None
    device, epochs = runs[-1]["device"], runs[-1].get("epochs")
    chapters: dict[str, dict] = {}
    for run in runs:  # oldest first: a later time of a chapter replaces an earlier one
        if run["device"] != device or run.get("epochs") != epochs:
            continue
        for c in run["chapters"]:
            chapters[c["notebook"]] = {**c, "date": run["date"][:10], "epochs": run.get("epochs")}
    dates = sorted({c["date"] for c in chapters.values()})
    return {"mode": mode, "device": device, "chapters": list(chapters.values()),
            "dates": dates, "epochs": sorted({c["epochs"] for c in chapters.values()
                                              if c["epochs"] is not None}),
            "total_seconds": sum(c["seconds"] for c in chapters.values())}


def pending_chapters(runs: list[dict], device: str, mode: str = "full",
                     epochs: int | None = None) -> list[str]:
    """Chapter numbers, in course order, whose latest run in ``mode`` on ``device`` (and at
    ``epochs``, when given) on the real faces did not succeed, or that never ran there (a run
    on the synthetic faces is a check, not the course).

    A full run on a lent GPU is spread over short leases: each runs what this still
    lists (``python -m agelib course --full --pending``), and the course-run records,
    committed after each lease, stitch the pieces into one run.

    >>> run = {"mode": "full", "device": "cuda (GPU)", "chapters": [
    ...     {"notebook": "00_setup.ipynb", "ok": True}, {"notebook": "01_dataset_exploration.ipynb", "ok": False}]}
    >>> pending_chapters([run], "cuda (GPU)")[:3]
    ['01', '02', '03']
    """
    latest: dict[str, bool] = {}
    for run in runs:  # oldest first: a later attempt at a chapter decides
        if (run["mode"] == mode and run["device"] == device and epochs in (None, run.get("epochs"))
                and run.get("data", "real") == "real"):
            latest.update({c["notebook"]: c["ok"] for c in run["chapters"]})
    return [ch.file[:2] for ch in CHAPTERS if not latest.get(ch.file)]


def course_run_table(runs: list[dict]) -> str:
    """README's table: per chapter, its latest wall time in each mode, from the records."""
    latest = {m: t for m in ("full", "smoke") if (t := latest_times(runs, m))}
    if not latest:
        return "_no course run recorded yet (`python -m agelib course`)_"

    def header(t: dict) -> str:
        epochs = "/".join(map(str, t["epochs"]))
        plural = "" if epochs == "1" else "s"
        return (f"{t['mode']} mode{f' ({epochs} epoch{plural})' if epochs else ''}, {t['device']}, "
                + " to ".join(dict.fromkeys([t["dates"][0], t["dates"][-1]])))

    lines = ["| chapter | " + " | ".join(header(t) for t in latest.values()) + " |",
             "|---|" + "---:|" * len(latest)]
    names = sorted({c["notebook"] for t in latest.values() for c in t["chapters"]})
    for name in names:
        cells = []
        for t in latest.values():
            row = next((c for c in t["chapters"] if c["notebook"] == name), None)
            cells.append("" if row is None else f"{row['seconds']:.0f} s" + _mark(row)
                         + ("" if row["ok"] else " (failed)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| **total** | " + " | ".join(f"**{t['total_seconds'] / 60:.1f} min**"
                                                for t in latest.values()) + " |")
    marked = [c for t in latest.values() for c in t["chapters"] if _mark(c)]
    if any(c.get("models_reused") for c in marked):
        lines.append(f"\n{WARM} the chapter reused models trained before its run (by an earlier "
                     "run, or an earlier part of a run split over calls) instead of training "
                     "them: run from scratch, it takes longer.")
    if any(c.get("models_reused") is None for c in marked):
        lines.append(f"\n{UNKNOWN} recorded before runs counted the models a chapter reused: "
                     "it may have loaded some instead of training them.")
    return "\n".join(lines)


def _mark(chapter: dict) -> str:
    """A chapter's time is a first run's only when it reused no model trained before its run."""
    reused = chapter.get("models_reused")
    return f" {UNKNOWN}" if reused is None else f" {WARM}" if reused else ""


def readme_with_course_runs(text: str, runs: list[dict]) -> str:
    """README text with the course-run block between its markers regenerated."""
    from . import records

    return records.replace_block(text, COURSE_START, COURSE_END, course_run_table(runs))
