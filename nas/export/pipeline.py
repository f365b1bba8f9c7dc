"""`nas export`: retrain the chosen architecture on train+val, prune, export every format, measure each
artifact in its own runtime, write manifest.json, then log the export (manifest included) to MLflow and
register the chosen artifact. An MLflow failure comes last, so it never costs the export on disk.

What gets compressed is the *retrained* model (train+val, the trial's own training settings and seed),
never a mid-search checkpoint; the manifest says so.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import json
import platform
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from nas.errors import NasError
from nas.export.source import candidate, choose, retraining
from nas.rundir import RunDir, atomic_write, claim_for_export
from nas.tf_setup import silenced_stderr
from nas.trial import trial_seed


@dataclass(frozen=True)
class ExportOptions:
    trial: int | None = None
    formats: tuple[str, ...] | None = None
    sparsity: float | None = None
    out: Path | None = None


def _digest(path: Path) -> tuple[str, int, int]:
    """sha256, bytes, gzip bytes; a directory counts as a deterministic tar of its files."""
    if path.is_dir():
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                info = tar.gettarinfo(str(f), arcname=str(f.relative_to(path)))
                info.mtime = 0
                with f.open("rb") as fh:
                    tar.addfile(info, fh)
        blob = buf.getvalue()
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        blob = path.read_bytes()
        size = len(blob)
    return hashlib.sha256(blob).hexdigest(), size, len(gzip.compress(blob, compresslevel=9, mtime=0))


def _fit(model: Any, cand: Any, x: np.ndarray, y: np.ndarray, epochs: int, seed: int,
         callbacks: list[Any] | None = None, decay: tuple[int, int] | None = None) -> None:
    """`decay`: (first, last): the learning rate decays after epoch `first` as it did in the search's endgame."""
    import keras

    from nas.augment import Augmentation, for_training
    from nas.data.pipeline import train_batches
    from nas.data.splits import Split
    from nas.train import compile_for_training, decay_after

    cfg = cand.train
    batches = train_batches(Split(x, y), num_classes=cand.arch.num_classes, batch_size=cfg.batch_size, seed=seed)
    trainer = for_training(model, Augmentation(**cfg.augment), pixel_max=cand.arch.pixel_max, seed=seed)
    # the trial's train.schedule, over this fit's own epochs
    compile_for_training(trainer, cfg, steps_per_epoch=batches.steps_per_epoch, epochs=epochs)
    callbacks = list(callbacks or [])
    if decay:
        callbacks.append(keras.callbacks.LearningRateScheduler(decay_after(cfg.learning_rate, *decay)))
    trainer.fit(batches.dataset, steps_per_epoch=batches.steps_per_epoch, epochs=epochs, callbacks=callbacks,
                shuffle=False, verbose=0)


def retrain(cand: Any, x_all: np.ndarray, y_all: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, epochs: int,
            seed: int, sparsity: float, finetune_epochs: int,
            decay: tuple[int, int] | None = None) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Retrain the candidate on train+val with its own settings and seed (and the endgame's `decay`, see _fit),
    then prune it (fine-tuning) when `sparsity` > 0, on whatever framework this process runs Keras on. Returns
    the model (float32, no pruning wrappers), the training record and the sparsity report."""
    import keras

    from nas.builder import build_model, float32_copy
    from nas.export import pruning

    keras.utils.set_random_seed(seed)
    model = build_model(cand.arch)
    t0 = time.perf_counter()
    _fit(model, cand, x_all, y_all, epochs, seed, decay=decay)
    schedule = f"{cand.train.schedule} (warmup {cand.train.warmup:g})"
    if decay:
        schedule += f", then a cosine decay after epoch {decay[0]} planned to {decay[1]}, as in the search's endgame"
    training: dict[str, Any] = {"retrain_epochs": epochs, "retrain_images": int(len(y_all)), "schedule": schedule,
                                "test_accuracy_retrained": _accuracy(model, x_test, y_test),
                                "retrain_seconds": round(time.perf_counter() - t0, 1)}
    report: dict[str, Any] = {"target": 0.0, **pruning.sparsity_report(model)}
    if sparsity > 0:
        # Ramp to the target over the first half of fine-tuning, then train at full sparsity. The trial's own
        # learning rate: on Fashion-MNIST, 80% sparsity recovered +0.75 pp at 1.0x and lost 0.84 pp at 0.3x.
        steps = finetune_epochs * -(-len(y_all) // cand.train.batch_size)
        prune = pruning.MagnitudePruning(pruning.Schedule(final=sparsity, begin_step=0, end_step=max(1, steps // 2)))
        _fit(model, cand, x_all, y_all, finetune_epochs, seed + 1, callbacks=[prune])
        pruning.strip(model)
        report = {"target": sparsity, **pruning.sparsity_report(model)}
        training.update(finetune_epochs=finetune_epochs, sparsity_ramp="polynomial (cubic) over the first half",
                        test_accuracy_pruned=_accuracy(model, x_test, y_test))
    return float32_copy(model, cand.arch), training, report


def tensorflow_installed() -> bool:
    """Whether TensorFlow imports here: the SavedModel and TFLite need it, JAX and PyTorch trials do not."""
    if importlib.util.find_spec("tensorflow") is None:
        return False
    try:
        with silenced_stderr():
            import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def retrain_and_export(out: str, formats: tuple[str, ...], cand: Any, x_all: np.ndarray, y_all: np.ndarray,
                       x_test: np.ndarray, y_test: np.ndarray, epochs: int, seed: int, sparsity: float,
                       cfg: Any, decay: tuple[int, int] | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """`retrain`, then every format this framework makes without TensorFlow, in a worker process of its own."""
    from nas.export.artifacts import build_artifacts

    model, training, report = retrain(cand, x_all, y_all, x_test, y_test, epochs, seed, sparsity,
                                      cfg.finetune_epochs, decay)
    artifacts, reference = build_artifacts(model, formats, Path(out), x_all, x_test, y_test, cfg, seed,
                                           Console(file=io.StringIO()), tensorflow=False)
    return training, report, artifacts, reference


def retrain_to_file(path: str, *args: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """`retrain` in a worker process of another framework: the model goes to `path` (.keras)."""
    model, training, report = retrain(*args)
    model.save(path)
    return training, report


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    with silenced_stderr():  # TF's C++ runtime prints tf.data notices straight to fd 2
        return float((model.predict(x.astype("float32"), batch_size=256, verbose=0).argmax(axis=1) == y).mean())


def export(run_dir: Path, opts: ExportOptions, console: Console) -> dict[str, Any]:
    """Export a run's best trial (or opts.trial). Holds the run dir's lock: a search running there could
    replace best/ while the export reads it."""
    with claim_for_export(RunDir(Path(run_dir))):
        return _export(run_dir, opts, console)


def _export(run_dir: Path, opts: ExportOptions, console: Console) -> dict[str, Any]:
    src = choose(run_dir, opts.trial)
    console.print(f"exporting trial {src.trial}: {src.chosen}")
    cfg = src.loaded.spec.export
    formats = tuple(opts.formats or cfg.formats)
    sparsity = cfg.sparsity if opts.sparsity is None else opts.sparsity
    if not 0 <= sparsity < 1:
        raise NasError(f"--sparsity {sparsity}: expected a value in [0, 1), e.g. 0.8 for 80% zero weights")
    out = opts.out or src.run.root / "export"

    from nas.data.splits import fingerprint
    from nas.data_info import load_splits

    with console.status("loading data"):
        splits, info, description = load_splits(src.loaded)
    test_fingerprint = fingerprint(splits.test)
    searched = src.meta.get("test_fingerprint")
    if searched and searched != test_fingerprint:
        console.print(f"[yellow]warning:[/] the test split now has fingerprint {test_fingerprint}, but the search "
                      f"was measured on {searched} ({src.run.meta}): the data changed since the search, so this "
                      "export's test accuracies are not comparable with best/metrics.json")
    cand = candidate(src, info)
    seed = trial_seed(src.loaded.spec.search.seed, src.trial)  # the winner's own trial seed
    plan = retraining(src)
    epochs, why_epochs, decay = plan.epochs, plan.why, plan.decay

    x_all = np.concatenate([splits.train.x, splits.val.x])
    y_all = np.concatenate([splits.train.y, splits.val.y])
    x_test, y_test = splits.test.x, splits.test.y
    framework = src.loaded.spec.train.backend
    what = (f"retraining trial {src.trial} on train+val ({len(y_all)} images, {epochs} epochs: {why_epochs}"
            + (f"; the learning rate decays after epoch {decay[0]}, as in the search" if decay else "")
            + (f", Keras on {framework} in a worker process)" if framework != "tensorflow" else ")")
            + (f", then pruning to {sparsity:.0%} over {cfg.finetune_epochs} fine-tuning epochs" if sparsity else ""))

    from nas.tf_setup import prepare_tensorflow

    tensorflow = framework == "tensorflow" or tensorflow_installed()
    artifacts: dict[str, dict[str, Any]] | None = None
    if not tensorflow:
        # A JAX or PyTorch machine without TensorFlow: retrain and export what needs no TensorFlow (.keras, ONNX)
        # in a worker process on the spec's framework; the manifest says what was skipped and how to get it.
        from nas import framework as fw
        from nas.worker import run_in_framework

        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        with console.status(what + "; TensorFlow is not installed: no SavedModel or TFLite"):
            training, report, artifacts, reference = run_in_framework(
                fw.Setup.of(src.loaded.spec.train), retrain_and_export, str(out), formats, cand, x_all, y_all,
                x_test, y_test, epochs, seed, sparsity, cfg, decay)
    elif framework == "tensorflow":
        prepare_tensorflow(src.loaded.spec.train.deterministic)
        with console.status(what), silenced_stderr():
            model, training, report = retrain(cand, x_all, y_all, x_test, y_test, epochs, seed, sparsity,
                                              cfg.finetune_epochs, decay)
    else:
        # Trained on the spec's framework, in a process of its own (Keras fixes its framework per process);
        # converted here, by TensorFlow, from the framework-neutral .keras file it saved.
        from nas import framework as fw
        from nas.worker import run_in_framework

        out.mkdir(parents=True, exist_ok=True)
        retrained = out / "retrained.keras"
        with console.status(what):
            training, report = run_in_framework(
                fw.Setup.of(src.loaded.spec.train), retrain_to_file, str(retrained), cand, x_all, y_all, x_test,
                y_test, epochs, seed, sparsity, cfg.finetune_epochs, decay)
        prepare_tensorflow(src.loaded.spec.train.deterministic)
        import keras

        model = keras.models.load_model(retrained, compile=False)
        retrained.unlink()
        training["test_accuracy_reloaded_on_tensorflow"] = _accuracy(model, x_test, y_test)
    training["framework"] = framework
    training["retrain_epochs_from"] = why_epochs
    console.print(f"retrained trial {src.trial}: test accuracy {training['test_accuracy_retrained']:.4f}")
    if sparsity > 0:
        console.print(f"pruned to {report['overall']:.1%} zero weights: test accuracy "
                      f"{training['test_accuracy_pruned']:.4f}")

    if artifacts is None:
        from nas.export.artifacts import build_artifacts

        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        artifacts, reference = build_artifacts(model, formats, out, x_all, x_test, y_test, cfg, seed, console)
    manifest = {
        "format": "nas.export/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": {
            "run_dir": str(src.run.root.resolve()), "trial": src.trial, "chosen": src.chosen,
            "spec_hash": src.loaded.hash,
            "data": description, "test_fingerprint": test_fingerprint,
            **({"test_fingerprint_search": searched} if searched and searched != test_fingerprint else {}),
            "retrained_on": "train+val: exactly the search's training and validation splits; no test image",
            "model": f"retrained from scratch on train+val for {epochs} epochs with the trial's settings and "
                     f"seed {seed}, then pruned and fine-tuned; not a checkpoint from the search",
        },
        "seed": seed,
        "input": {
            "shape": [None, *info.input_shape], "dtype": "float32", "value_range": [0, info.pixel_max],
            "preprocessing": "none: feed raw pixels; scaling is the model's first layer",
            "class_names": list(info.class_names),
        },
        "architecture": json.loads(cand.arch.to_json()),
        "training": training,
        "sparsity": report,
        "keras_reference": reference,
        "artifacts": artifacts,
        "versions": _versions(),
    }
    # On disk before anything talks to MLflow: a tracking failure must never cost the export.
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    console.print(_table(manifest))
    failed = [k for k, v in artifacts.items() if v["status"] == "failed"]
    skipped = [k for k, v in artifacts.items() if v["status"] == "skipped"]
    console.print(f"wrote {out}/ (manifest.json)" + (f"; failed: {', '.join(failed)} (reasons in the "
                                                     "manifest)" if failed else ""))
    if skipped:
        console.print(f"[yellow]skipped[/] {', '.join(skipped)}: they need TensorFlow, which is not installed "
                      "here; pip install tensorflow==2.21.0 and rerun `nas export` (or export on a machine with it)")

    from nas.export.registry import ExportTrackingError, log_and_register

    try:  # logs out/ as it is on disk, manifest.json included, under export/
        logged = log_and_register(src, out, manifest, cfg.registry if cfg.registry in formats else None)
    except ExportTrackingError as exc:
        manifest["mlflow"] = {"logged": False, "tracking_uri": exc.uri, "error": exc.cause}
        atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
        raise
    manifest["mlflow"] = logged  # known only after logging: the copy in MLflow lacks this section
    atomic_write(out / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("nas", "tensorflow", "keras", "ai-edge-litert", "tf2onnx", "onnxruntime", "onnx"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _table(manifest: dict[str, Any]) -> Table:
    t = Table(title=f"export of trial {manifest['source']['trial']} "
                    f"(sparsity {manifest['sparsity']['overall']:.0%})", title_justify="left")
    for col in ("artifact", "status", "test acc", "agree", "KB", "gzip KB", "ms/img"):
        t.add_column(col, justify="left" if col in ("artifact", "status") else "right", no_wrap=True)
    for name, a in manifest["artifacts"].items():
        if a["status"] != "ok":
            t.add_row(name, "[red]failed[/]" if a["status"] == "failed" else "[yellow]skipped[/]", "-", "-", "-", "-",
                      "-")
            continue
        agree = "-" if a.get("top1_agreement") is None else f"{a['top1_agreement']:.4f}"
        t.add_row(name, "ok", f"{a['test_accuracy']:.4f}", agree, f"{a['bytes'] / 1024:.0f}",
                  f"{a['gzip_bytes'] / 1024:.0f}", f"{a['latency_ms_median']:.3f}")
    return t
