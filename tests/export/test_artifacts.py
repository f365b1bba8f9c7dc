"""One failing converter never loses the other artifacts; the manifest records why."""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

keras = pytest.importorskip("keras")

from nas.arch import ArchConfig, BlockConfig  # noqa: E402
from nas.builder import build_model  # noqa: E402
from nas.export import artifacts, convert  # noqa: E402
from nas.spec.model import ExportSpec  # noqa: E402


def test_a_failing_format_is_recorded_and_the_rest_survive(tmp_path, monkeypatch) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("converter exploded")

    monkeypatch.setattr(convert, "to_onnx", broken)
    model = build_model(ArchConfig((8, 8, 1), 3, (BlockConfig(4),), pixel_max=16.0, head_depth=0))
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 16, (40, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 40)
    calib = rng.uniform(0, 16, (20, 8, 8, 1)).astype("float32")
    cfg = ExportSpec(latency_runs=10, calibration_samples=10)
    results, reference = artifacts.build_artifacts(model, ("tflite-float32", "onnx"), tmp_path, calib, x, y, cfg, 0,
                                                   Console(quiet=True))
    assert results["onnx"] == {"status": "failed", "error": "RuntimeError: converter exploded"}
    assert results["tflite-float32"]["status"] == "ok" and results["tflite-float32"]["top1_agreement"] == 1.0
    assert (tmp_path / "model_float32.tflite").exists() and not (tmp_path / "saved_model").exists()
    # the accuracies are the model's own on (x, y), counted here independently of nas.export.measure
    expected = float((model.predict(x, verbose=0).argmax(axis=1) == y).mean())
    assert reference["test_accuracy"] == pytest.approx(expected)
    assert results["tflite-float32"]["test_accuracy"] == pytest.approx(expected)


def test_the_winner_is_retrained_as_long_as_the_search_found_it_good(tmp_path) -> None:
    """export.retrain_epochs when set; else train.epochs, or the winner's best epoch where the endgame trained it
    past them (search.endgame): retraining a 20-epoch finalist for 12 epochs would export a weaker model."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from nas.export.source import ExportSource, retrain_epochs
    from nas.rundir import RunDir
    from nas.spec import parse_spec

    run = RunDir(Path(tmp_path))
    run.best.mkdir(parents=True)
    (run.best / "metrics.json").write_text(json.dumps({"trial": 3, "best_epoch": 20.0}))

    def epochs(trial: int, extra: str = "") -> tuple[int, str]:
        spec = parse_spec(f"name: e\ndata: {{source: digits}}\nspace: {{depth: 1}}\ntrain: {{epochs: 12}}\n{extra}")
        return retrain_epochs(ExportSource(run, SimpleNamespace(spec=spec), trial, {}, {}))  # type: ignore[arg-type]

    assert epochs(3) == (20, "its best epoch in the search, past train.epochs 12")
    assert epochs(4) == (12, "train.epochs")  # another trial (--trial 4): its own epochs are not on record
    assert epochs(3, "export: {retrain_epochs: 5}\n") == (5, "export.retrain_epochs")
    (run.best / "metrics.json").write_text(json.dumps({"trial": 3, "best_epoch": 8.0}))
    assert epochs(3) == (12, "train.epochs")  # best before train.epochs: the usual retraining
