"""`nas export` on a finished tiny digits search: every format, measured in its own runtime, registered."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
EXPORT = """export:
  retrain_epochs: 3
  finetune_epochs: 2
  sparsity: 0.5
  latency_runs: 20
  calibration_samples: 50
"""


def nas(*args: object, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nas", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    from tests.conftest import TINY_SPEC

    tmp = tmp_path_factory.mktemp("export")
    spec = tmp / "tiny.yaml"
    spec.write_text(TINY_SPEC.format(name="tiny", epochs=2, trials=2, seed=0) + EXPORT)
    r = nas("search", spec, "--runs-dir", tmp / "runs")
    assert r.returncode == 0, r.stderr
    return tmp / "runs" / "tiny"


@pytest.fixture(scope="module")
def exported(finished_run: Path) -> dict:
    r = nas("export", finished_run)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Traceback" not in r.stderr
    return json.loads((finished_run / "export" / "manifest.json").read_text())


def test_every_artifact_is_written_measured_and_hashed(finished_run: Path, exported: dict) -> None:
    arts = exported["artifacts"]
    assert set(arts) == {"keras", "saved_model", "tflite-float32", "tflite-float16", "tflite-dynamic", "tflite-int8", "onnx"}
    for name, a in arts.items():
        assert a["status"] == "ok", (name, a)
        path = finished_run / "export" / a["path"]
        assert path.exists()
        if path.is_file():
            assert a["bytes"] == path.stat().st_size
            assert a["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert 0.5 < a["test_accuracy"] <= 1 and a["latency_ms_median"] > 0 and 0 < a["gzip_bytes"] < a["bytes"] * 1.01
    keras_acc = exported["keras_reference"]["test_accuracy"]
    assert arts["tflite-float32"]["top1_agreement"] >= 0.99 and arts["onnx"]["top1_agreement"] >= 0.99
    assert abs(arts["tflite-int8"]["test_accuracy"] - keras_acc) < 0.05
    assert arts["tflite-int8"]["bytes"] < arts["tflite-float32"]["bytes"]  # tiny model: fixed overhead dominates
    assert arts["tflite-int8"]["input"]["dtype"] == "int8" and "zero_point" in arts["tflite-int8"]["input"]["quantization"]


def test_manifest_says_what_was_exported(exported: dict) -> None:
    assert exported["source"]["trial"] >= 0 and "not a checkpoint from the search" in exported["source"]["model"]
    assert exported["input"]["shape"] == [None, 8, 8, 1] and exported["input"]["value_range"] == [0, 16.0]
    assert len(exported["input"]["class_names"]) == 10
    assert abs(exported["sparsity"]["overall"] - 0.5) < 0.01 and exported["sparsity"]["target"] == 0.5
    assert all(abs(v - 0.5) < 0.01 for v in exported["sparsity"]["per_layer"].values())
    t = exported["training"]
    assert t["retrain_epochs"] == 3 and "test_accuracy_retrained" in t and "test_accuracy_pruned" in t
    assert {"tensorflow", "keras", "ai-edge-litert", "onnxruntime"} <= set(exported["versions"])


def test_exported_keras_model_is_plain_keras(finished_run: Path, exported: dict) -> None:
    code = ("import json, zipfile, sys; cfg = json.loads(zipfile.ZipFile(sys.argv[1]).read('config.json'));"
            "mods = {l['module'] for l in cfg['config']['layers']}; print(sorted(mods));"
            "names = [l['class_name'] for l in cfg['config']['layers']]; print(names)")
    r = subprocess.run([sys.executable, "-c", code, str(finished_run / "export" / "model.keras")],
                       capture_output=True, text=True)
    assert r.returncode == 0
    assert "nas" not in r.stdout.splitlines()[0] and "Random" not in r.stdout  # no augmentation, no nas layers


def test_chosen_artifact_is_registered_in_mlflow(finished_run: Path, exported: dict) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(finished_run.parent / 'mlflow.db').resolve()}"
    versions = MlflowClient(uri).search_model_versions("name='tiny'")
    reg = exported["mlflow"]["registered"]
    match = [v for v in versions if int(v.version) == reg["version"]]
    assert match and match[0].tags["format"] == "tflite-int8"
    assert match[0].source.endswith("/export/model_int8.tflite")
    assert match[0].tags["sha256"] == exported["artifacts"]["tflite-int8"]["sha256"]


def test_export_options_and_bad_input(finished_run: Path, exported: dict, tmp_path: Path) -> None:
    r = nas("export", finished_run, "--trial", "999")
    assert r.returncode == 2 and "--trial 999: no such trial" in r.stderr
    r = nas("export", finished_run, "--formats", "tflite-int9")
    assert r.returncode == 2 and "Did you mean 'tflite-int8'?" in r.stderr
    r = nas("export", finished_run, "--sparsity", "1.5")
    assert r.returncode == 2 and "expected a value in [0, 1)" in r.stderr
    r = nas("export", tmp_path)
    assert r.returncode == 2 and "not a nas run directory" in r.stderr
    r = nas("export", finished_run, "--trial", "0", "--formats", "tflite-int8", "--sparsity", "0")
    assert r.returncode == 0, r.stderr
    m = json.loads((finished_run / "export" / "manifest.json").read_text())
    assert set(m["artifacts"]) == {"tflite-int8"} and m["source"]["trial"] == 0 and m["sparsity"]["overall"] < 0.05
