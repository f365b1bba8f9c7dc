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
    past them (search.endgame): retraining a 20-epoch finalist for 12 epochs would export a weaker model. The
    finalist's learning-rate decay (best/metrics.json's lr_decay) is replayed wherever the retraining reaches it."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    from nas.export.source import ExportSource, Retraining, retraining
    from nas.rundir import RunDir
    from nas.spec import parse_spec

    run = RunDir(Path(tmp_path))
    run.best.mkdir(parents=True)

    def plan(trial: int, extra: str = "", **best: object) -> Retraining:
        (run.best / "metrics.json").write_text(json.dumps({"trial": 3, **best}))
        spec = parse_spec(f"name: e\ndata: {{source: digits}}\nspace: {{depth: 1}}\ntrain: {{epochs: 12}}\n{extra}")
        return retraining(ExportSource(run, SimpleNamespace(spec=spec), trial, {}, {}))  # type: ignore[arg-type]

    past = "its best epoch in the search, past train.epochs 12"
    assert plan(3, best_epoch=20.0) == Retraining(20, past)
    assert plan(4, best_epoch=20.0) == Retraining(12, "train.epochs")  # --trial 4: its epochs are not on record
    assert plan(3, "export: {retrain_epochs: 5}\n", best_epoch=20.0) == Retraining(5, "export.retrain_epochs")
    assert plan(3, best_epoch=8.0) == Retraining(12, "train.epochs")  # best before train.epochs: the usual retraining
    # the finalist paused at 9 and trained on to 22, its rate decaying: the retraining decays it the same way
    assert plan(3, best_epoch=21.0, lr_decay=[9, 22]) == Retraining(21, past, (9, 22))
    assert plan(3, best_epoch=11.0, lr_decay=[9, 22]) == Retraining(12, "train.epochs", (9, 22))
    assert plan(3, best_epoch=8.0, lr_decay=[12, 22]) == Retraining(12, "train.epochs")  # never reaches the decay
    assert plan(4, best_epoch=21.0, lr_decay=[9, 22]) == Retraining(12, "train.epochs")
    assert plan(3, "export: {retrain_epochs: 30}\n", best_epoch=21.0, lr_decay=[9, 22]) == \
        Retraining(30, "export.retrain_epochs")
