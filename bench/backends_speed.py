"""Keras frameworks for nas's trials on this machine (a benchmark, not a test; issue 12).

One fixed ~95k-parameter Fashion-MNIST CNN (3 conv blocks of 32/64/128 filters, batch norm, max pooling, GAP,
Adam 1e-3, batch 128, flip + translation augmentation), trained through nas's own trial path
(`nas.train.run_trial`, as a worker runs it) on each framework, each in a fresh process:

  tensorflow-tfdata  TensorFlow, augmentation in a tf.data map on the CPU (nas's path before issue 11), for
                     comparison: the model and data order are nas's, only the augmentation moves
  tensorflow         TensorFlow, augmentation in the training step (nas's path)
  jax                JAX, augmentation in the training step, numpy batches
  torch              PyTorch, augmentation in the training step, numpy batches
  jax-bare, torch-bare, tensorflow-bare
                     the same model, augmentation wrapper, optimizer and settings in a bare `model.fit` on
                     numpy arrays (no nas trial around it): how much the trial path costs

Reported per variant: training images/s (median over epochs 2.., so tracing and compiling are left out), the
first epoch's seconds (which include them), seconds until val accuracy first reaches 0.90 (from the start of
the trial), the best val accuracy, and the fixed cost of a trial (a 1-epoch trial on 256 images: build,
compile, trace, validate; the second of two, so one-time imports are left out).

    .venv/bin/python bench/backends_speed.py [--data idx:data/fashion-mnist] [--epochs 6] [--variants jax torch]
        [--precision auto|float32|mixed] [--jit auto|true|false] [--batch-size 128]

On a GPU machine bench/gpu_check.sh runs it over precisions and XLA settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("tensorflow-tfdata", "tensorflow", "jax", "torch", "tensorflow-bare", "jax-bare", "torch-bare")
SPEC = """name: speed
data: {{source: "{source}", validation_fraction: 0.1}}
augment: {{flip: horizontal, translation: 0.1}}
space:
  depth: 3
  filters: {{base: 32, growth: 2.0}}
  pooling: max
  head: {{type: gap, depth: 0}}
train: {{epochs: {epochs}, batch_size: {batch_size}, learning_rate: 1e-3, backend: {framework}}}
"""


def child(variant: str, source: str, epochs: int, target: float, batch_size: int, precision: str,
          jit: bool | str) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    framework = variant.split("-")[0]
    from nas import framework as fw

    device = fw.prepare(fw.Setup(framework, deterministic=False, precision=precision, jit_compile=jit))
    from nas.arch import plan
    from nas.data.splits import Split
    from nas.data_info import load_splits
    from nas.space import SearchSpace
    from nas.spec import load_spec
    from nas.trial import TrialTask

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed.yaml"
        path.write_text(SPEC.format(source=source, epochs=epochs, framework=framework, batch_size=batch_size))
        loaded = load_spec(path)
    splits, info, _ = load_splits(loaded)
    splits = splits.without_test()
    candidate = SearchSpace(loaded.spec).decode({}, info)
    train = {"tfdata": run_tfdata, "bare": run_bare}.get(variant.partition("-")[2], run_nas)

    small = dataclasses.replace(splits, train=Split(splits.train.x[:256], splits.train.y[:256]),
                                val=Split(splits.val.x[:256], splits.val.y[:256]))
    fixed = []
    for _ in range(2):
        t0 = time.perf_counter()
        train(TrialTask(0, candidate, seed=0, epochs=1), small, lambda e, m: "continue")
        fixed.append(time.perf_counter() - t0)

    marks: list[tuple[float, float]] = []
    t0 = time.perf_counter()

    def on_epoch(epoch: int, metrics: dict[str, float]) -> str:
        marks.append((time.perf_counter() - t0, metrics["val_accuracy"]))
        return "continue"

    train(TrialTask(1, candidate, seed=0, epochs=epochs), splits, on_epoch)
    ends = [m[0] for m in marks]
    epoch_s = [b - a for a, b in zip([0.0, *ends], ends, strict=False)]
    steady = statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]
    reached = next((t for t, acc in marks if acc >= target), None)
    import keras

    return {"variant": variant, "keras_framework": keras.backend.backend(), "device": device,
            "policy": keras.config.dtype_policy().name, "jit_compile": jit, "batch_size": batch_size,
            "params": plan(candidate.arch).params,
            "train_images": len(splits.train.y), "images_per_s": len(splits.train.y) / steady,
            "first_epoch_s": epoch_s[0], "epoch_s": epoch_s, "time_to_target_s": reached,
            "best_val_accuracy": max(m[1] for m in marks), "val_curve": [m[1] for m in marks],
            "fixed_cost_s": fixed[1]}


def run_nas(task: Any, splits: Any, on_epoch: Any) -> Any:
    from nas.train import run_trial

    return run_trial(task, splits, on_epoch)


def _report(keras: Any, on_epoch: Any) -> Any:
    class Report(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            on_epoch(epoch + 1, {"val_accuracy": float((logs or {})["val_accuracy"])})

    return Report()


def run_bare(task: Any, splits: Any, on_epoch: Any) -> None:
    """The model, augmentation wrapper, optimizer, precision and XLA setting of nas's trial, in a bare fit on numpy
    arrays: no epoch-order generator, no checkpointing, no per-epoch round trip to a search process."""
    import keras
    import numpy as np
    from nas import framework as fw
    from nas.augment import Augmentation, for_training
    from nas.builder import build_model
    from nas.train import compile_for_training

    keras.backend.clear_session()
    arch, cfg = task.candidate.arch, task.candidate.train
    keras.utils.set_random_seed(task.seed)
    trainer = for_training(build_model(arch), Augmentation(**cfg.augment), pixel_max=arch.pixel_max, seed=task.seed)
    steps = -(-len(splits.train.y) // cfg.batch_size)
    compile_for_training(trainer, cfg, steps_per_epoch=steps, epochs=task.epochs, jit_compile=fw.jit_compile())
    eye = np.eye(arch.num_classes, dtype=np.float32)
    trainer.fit(splits.train.x.astype(np.float32), eye[splits.train.y], batch_size=cfg.batch_size,
                epochs=task.epochs, validation_data=(splits.val.x.astype(np.float32), eye[splits.val.y]),
                validation_batch_size=max(cfg.batch_size, 256), callbacks=[_report(keras, on_epoch)], verbose=0)


def run_tfdata(task: Any, splits: Any, on_epoch: Any) -> None:
    """nas's trial, except that the augmentation runs in a tf.data map (on the CPU) instead of the train step."""
    import keras
    import tensorflow as tf
    from nas.augment import Augmentation, augmentation_layers
    from nas.builder import build_model
    from nas.data.pipeline import eval_dataset, train_batches
    from nas.train import compile_for_training

    keras.backend.clear_session()
    arch, cfg = task.candidate.arch, task.candidate.train
    keras.utils.set_random_seed(task.seed)
    model = build_model(arch)
    augment = keras.Sequential(augmentation_layers(Augmentation(**cfg.augment), pixel_max=arch.pixel_max,
                                                   seed=task.seed))
    batches = train_batches(splits.train, num_classes=arch.num_classes, batch_size=cfg.batch_size, seed=task.seed)
    ds = batches.dataset.map(lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    compile_for_training(model, cfg, steps_per_epoch=batches.steps_per_epoch, epochs=task.epochs)
    val = eval_dataset(splits.val, num_classes=arch.num_classes, batch_size=256)

    model.fit(ds.prefetch(tf.data.AUTOTUNE), steps_per_epoch=batches.steps_per_epoch, epochs=task.epochs,
              validation_data=val, callbacks=[_report(keras, on_epoch)], verbose=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="idx:data/fashion-mnist", help="a nas data source (default Fashion-MNIST)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--target", type=float, default=0.90, help="val accuracy for the time-to-accuracy column")
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[:4]))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", choices=["auto", "float32", "mixed"], default="auto")
    ap.add_argument("--jit", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    source = args.data
    if source.startswith(("idx:", "npz:", "folder:")):  # the spec lives in a temporary folder
        kind, where = source.split(":", 1)
        source = f"{kind}:{(Path.cwd() / where).resolve().as_posix()}"
    jit: bool | str = {"true": True, "false": False}.get(args.jit, "auto")
    if args.child:
        print("RESULT " + json.dumps(child(args.child, source, args.epochs, args.target, args.batch_size,
                                           args.precision, jit)), flush=True)
        return
    rows = []
    for variant in args.variants:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--child", variant, "--data", source, "--epochs",
                               str(args.epochs), "--target", str(args.target), "--batch-size", str(args.batch_size),
                               "--precision", args.precision, "--jit", args.jit], capture_output=True, text=True,
                              env=env)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{variant}: failed\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        row = json.loads(line[len("RESULT "):])
        row["process_s"] = time.perf_counter() - t0
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.data}, {args.epochs} epochs, load {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs\n")
    print(f"| variant | device | policy | XLA | images/s | first epoch s | s to {args.target:.2f} val | best val | "
          "fixed cost per trial s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        reached = f"{r['time_to_target_s']:.0f}" if r["time_to_target_s"] is not None else "not reached"
        print(f"| {r['variant']} | {r['device']} | {r['policy']} | {r['jit_compile']} | {r['images_per_s']:.0f} | "
              f"{r['first_epoch_s']:.1f} | {reached} | {r['best_val_accuracy']:.4f} | {r['fixed_cost_s']:.2f} |")


if __name__ == "__main__":
    main()
