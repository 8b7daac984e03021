"""``.ci/cpu-study``, the issue-4 chain at CPU scale, run end to end in smoke mode.

One epoch per run on 40 synthetic faces: a check that every ``train`` line parses, that
each stage finds the checkpoint of the one before (teacher, ConvNeXt, ViT, then the hybrid
initialised from the ConvNeXt alone, from both, then also distilled), that the records say
what each run was, and that running the chain again trains nothing that already ran.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from agelib.data import synthetic

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_study_trains_the_chain_and_records_each_stage(tmp_path):
    faces = synthetic.write_synthetic_faces(tmp_path / "faces", n=40, seed=2, size=64)
    env = {k: v for k, v in os.environ.items() if k != "AGELIB_DEVICE"}
    env.update(AGELIB_HOME=str(tmp_path / "home"), AGELIB_RESULTS=str(tmp_path / "results"),
               AGELIB_DATA=str(faces), AGELIB_SMOKE="1", HF_HUB_OFFLINE="1",
               PYTHON=sys.executable, EPOCHS="1")
    done = subprocess.run(["bash", str(ROOT / ".ci" / "cpu-study")], env=env, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    saved = [json.loads(p.read_text()) for p in sorted((tmp_path / "results").glob("*.json"))]
    runs = {(r["tag"], r["variant"]): r for r in saved}
    assert len(saved) == 9
    assert list(runs) == [("cpu-baseline", "2 CPU cores, 1 epochs"), ("cpu-study", "stage 1"),
                          ("cpu-study", "stage 2"), ("cpu-study", "from scratch"),
                          ("cpu-study", "three-stage"), ("cpu-study", "ConvNeXt start"),
                          ("cpu-study", "three-stage + distilled"),
                          ("cpu-study", "ResNet's recipe")]  # two runs: ConvNeXt, hybrid
    assert all((r["image_size"], r["epochs"], r["pretrained"]) == (64, 1, False) for r in saved)
    hybrids = [r for r in saved if r["backbone"] == "hybrid_atto"]
    assert [sorted(r["config"]["init_from"] or []) for r in hybrids] == [
        [], ["cnn", "vit"], ["cnn"], ["cnn", "vit"], []]
    assert [r["config"]["distill_from"] is None for r in hybrids] == [True, True, True, False, True]
    controls = [r for r in saved if r["variant"] == "ResNet's recipe"]
    assert [(r["backbone"], r["loss"], r["schedule"], r["lr"]) for r in controls] == [
        ("convnext_atto", "l1", "one_cycle", 1e-3), ("hybrid_atto", "l1", "one_cycle", 1e-3)]
    vit = runs[("cpu-study", "stage 2")]["config"]["model"]
    assert vit["backbone_args"] == {"embed_dim": 80, "num_heads": 2, "depth": 2}
    checkpoints = {p.name for p in (tmp_path / "home" / "checkpoints").glob("*.pt")}
    assert {"cpu-baseline-resnet18.pt", "cpu-study-hybrid-3stage-distilled.pt"} <= checkpoints

    again = subprocess.run(["bash", str(ROOT / ".ci" / "cpu-study")], env={**env, "CONTROLS": "0"},
                           text=True, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("== skip") == 7 and " train " not in again.stdout
    assert len(list((tmp_path / "results").glob("*.json"))) == 9  # no run was repeated
