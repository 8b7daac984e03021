"""The course's table of contents and the links made from ``settings.REPOSITORY``.

README's chapter table and every notebook's Colab install cell are generated
from here, so publishing the course is one edit (``settings.REPOSITORY``)
followed by ``python -m agelib links --write``; a test fails while they disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from . import settings

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
            link = f"[notebook](notebooks/{ch.file}) · [Open in Colab]({COLAB.format(repo=repo, file=ch.file)})"
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
