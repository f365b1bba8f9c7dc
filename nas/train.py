"""Train one candidate: build, compile, fit with per-epoch reporting, keep the best epoch's weights.

Runs inside the trial worker (or inline). Talks to the outside only through `on_epoch`, which returns
"continue", "prune", "pause" or "stop"; what to report and when to prune is the search loop's business, not ours.
A paused trial leaves a checkpoint (nas.checkpoint) from which a later task continues it exactly.
"""

from __future__ import annotations

import math
import time
import traceback
from pathlib import Path
from typing import Any

import keras

from nas import checkpoint, deployed
from nas import framework as fw
from nas.arch import plan
from nas.augment import Augmentation, for_training
from nas.builder import build_model, float32_copy
from nas.data.pipeline import eval_dataset, padding, steps_per_epoch, train_batches
from nas.data.splits import Split, Splits, subset
from nas.errors import InvalidArchitecture
from nas.schedule import learning_rate, start_at_epoch
from nas.space import Candidate, TrainConfig
from nas.trial import EPOCH_METRICS, EpochHook, TrialResult, TrialState, TrialTask, timeout_reason


def make_optimizer(t: TrainConfig, total_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The spec's optimizer, its learning rate following `t.schedule` over `total_steps` (the fit's planned
    optimizer steps; needed by every schedule but a plain constant rate)."""
    if total_steps is None and (t.schedule != "constant" or t.warmup):
        raise ValueError(f"train.schedule {t.schedule!r} (warmup {t.warmup}) needs the fit's planned steps: "
                         "pass total_steps = steps per epoch x planned epochs")
    lr = learning_rate(t.schedule, t.learning_rate, t.warmup, total_steps or 1)
    # Keras 3 applies weight_decay decoupled in every optimizer, so "adam" with decay would just be AdamW
    # under another name; adam stays plain Adam, and weight_decay applies to adamw and sgd.
    wd = t.weight_decay or None
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)
    return keras.optimizers.SGD(lr, momentum=t.momentum, nesterov=True, weight_decay=wd)


def compile_for_training(model: keras.Model, t: TrainConfig, *, steps_per_epoch: int, epochs: int,
                         jit_compile: bool | str = "auto") -> None:
    """The one place a model is compiled for training: every trial, and export's retraining of the winner.
    The learning rate follows `t.schedule` over `epochs` planned epochs of `steps_per_epoch` steps each."""
    model.compile(optimizer=make_optimizer(t, steps_per_epoch * epochs),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing),
                  # weighted: the pads of a last validation batch filled up to a whole one weigh 0 (nas.data.pipeline);
                  # Keras hands sample weights to `weighted_metrics` only. Training batches carry none.
                  weighted_metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")], jit_compile=jit_compile)
    # Built here rather than inside the first traced train step: Keras otherwise traces that step's graph
    # around the optimizer's variable creation, which cost ~1.5 s per trial on 2 cores (same weights after).
    model.optimizer.build(model.trainable_variables)


def describe_failure(exc: BaseException, frames: int = 10, message_chars: int = 2500) -> tuple[str, str]:
    """(reason, traceback) of a trial's exception. The reason is the one line its leaderboard row and MLflow run
    show. The traceback keeps the innermost frames (the outer ones are always our worker plumbing) and the ends
    of the message, so that it fits an MLflow tag (8000 characters) with its exception line: TensorFlow's
    messages repeat the whole stack the failing op was built in."""
    name, text = type(exc).__name__, str(exc).strip()
    # TensorFlow raises ResourceExhaustedError for GPU and CPU allocations alike; CUDA's own failures come as
    # Internal/UnknownError whose text says "out of memory".
    if name == "ResourceExhaustedError" or isinstance(exc, MemoryError) or "out of memory" in text.lower():
        reason = f"out of memory{fw.where()}; lower train.batch_size or space.max_params"
    else:
        reason = f"{name}: {text.splitlines()[0][:300]}" if text else name
    tb = traceback.TracebackException.from_exception(exc, limit=-frames)
    message = "".join(tb.format_exception_only())
    if len(message) > message_chars:
        half = message_chars // 2
        message = f"{message[:half]}\n[... {len(message) - 2 * half} characters ...]\n{message[-half:]}"
    return reason, "Traceback (most recent call last):\n" + "".join(tb.stack.format()) + message


class _EpochCallback(keras.callbacks.Callback):
    """Reports each epoch, stops on divergence or a prune/pause decision, and remembers the best weights."""

    # Keras then runs on_train_batch_end in a thread pool: watching every batch's loss costs no device sync.
    async_safe = True

    def __init__(self, on_epoch: EpochHook, task: TrialTask, patience: int | None, model: keras.Model):
        super().__init__()
        self.on_epoch, self.patience, self.candidate = on_epoch, patience, model  # the model saved, not the wrapper
        self.monitor, self.sign = task.monitor, (1.0 if task.mode == "maximize" else -1.0)
        self.history: list[dict[str, float]] = []  # the whole curve, the epochs before a resume included
        self.best: dict[str, float] = {}
        self.best_epoch: int | None = None
        self.best_weights: list[Any] | None = None
        self.stopped: tuple[TrialState, str] | None = None  # (state, reason)
        self.paused = self.out_of_budget = False
        self.resumed_at = 0  # epochs already trained when this task began (from a checkpoint)
        self.rng: list[Any] = []  # a checkpoint's framework random state, restored when training begins
        self._since_best = 0
        self.time_limit_s, self.timed_out, self.started = task.time_limit_s, False, time.perf_counter()
        self.stop_at, self.mid_epoch = task.stop_at, False  # search.budget's deadline, and whether it cut an epoch
        self.epochs = task.epochs
        self.val_loss_scale = 1.0  # undoes the padding of the last validation batch (nas.data.pipeline.Padding)
        self.val_samples = math.nan  # how many images val_accuracy is measured on (its noise: nas.trial)

    def progress(self) -> dict[str, Any]:
        return {"history": self.history, "best": self.best, "best_epoch": self.best_epoch,
                "since_best": self._since_best}

    def restore(self, ckpt: checkpoint.Checkpoint) -> None:
        p = ckpt.progress
        self.history, self.best, self.best_epoch = list(p["history"]), dict(p["best"]), p["best_epoch"]
        self._since_best, self.best_weights, self.resumed_at = int(p["since_best"]), ckpt.best_weights, ckpt.epoch
        self.rng = ckpt.rng

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # The framework's global random state (PyTorch's, for dropout) goes back just before the first batch, not
        # with the variables: fit draws from it before that (building the model, starting its data loader), where
        # a run trained straight through did so only once, at its start. (Batch-begin hooks run synchronously.)
        if self.rng:
            fw.set_rng_state(self.rng)
            self.rng = []

    def _improved(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.monitor, math.nan)
        if not math.isfinite(value):
            return False
        return self.best_epoch is None or self.sign * value > self.sign * self.best[self.monitor]

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # The running loss is NaN/inf from the first bad batch on: stop there, not at the end of the epoch.
        # Keras still ends the epoch (validation, on_epoch_end), which records the divergence.
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.model.stop_training = True
        if self.time_limit_s is not None and time.perf_counter() - self.started > self.time_limit_s:
            self.timed_out = self.model.stop_training = True
        # the budget's deadline ends even a long epoch (Keras still validates it, so its metrics stay comparable)
        if self.stop_at is not None and not self.mid_epoch and time.time() >= self.stop_at:
            self.mid_epoch = self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        n = epoch + 1
        metrics = {k: float(v) for k, v in (logs or {}).items() if k in EPOCH_METRICS}
        if "val_loss" in metrics:
            metrics["val_loss"] *= self.val_loss_scale
        self.history.append(metrics)
        decision = self.on_epoch(n, metrics)
        loss = metrics.get("loss", math.nan)
        if not math.isfinite(loss):
            self.stopped = (TrialState.DIVERGED, f"diverged at epoch {n} (loss {loss}); lower train.learning_rate")
            self.model.stop_training = True
            return
        if self.timed_out and self.time_limit_s is not None:
            self.stopped = (TrialState.FAILED, timeout_reason(self.time_limit_s, n))
            return
        if self._improved(metrics):
            self.best, self.best_epoch, self._since_best = metrics, n, 0
            self.best_weights = self.candidate.get_weights()
        else:
            self._since_best += 1
        shown = metrics.get(self.monitor, math.nan)
        # search.budget spent: a finished trial at lower fidelity; its best epoch stands
        if (decision == "stop" and n < self.epochs) or self.mid_epoch:
            when = "during" if self.mid_epoch else "after"
            self.stopped = (TrialState.FINISHED, f"stopped by search.budget {when} epoch {n} of {self.epochs}; its "
                                                 "best epoch stands")
            self.out_of_budget = self.model.stop_training = True
        elif decision.startswith("prune"):  # "prune", or "prune: <the pruner's reason>"
            why = decision.partition(":")[2].strip()
            self.stopped = (TrialState.PRUNED, why or f"pruned at epoch {n} ({self.monitor} {shown:.4f})")
            self.model.stop_training = True
        elif decision == "pause" and n < self.epochs:  # a rung's verdict: "not yet"; it may be promoted later
            self.stopped = (TrialState.PAUSED, f"paused at epoch {n} ({self.monitor} {shown:.4f}); continues from "
                                               "its checkpoint if its rung promotes it")
            self.paused = self.model.stop_training = True
        elif self.patience and self._since_best >= self.patience:
            self.model.stop_training = True  # early stopping: a finished trial, not a pruned one


def _result(state: TrialState, reason: str | None, cb: _EpochCallback, started: float,
            model_path: str | None = None, traceback: str | None = None) -> TrialResult:
    metrics = {**cb.best, "best_epoch": float(cb.best_epoch or math.nan),
               "epochs_run": float(len(cb.history) - cb.resumed_at), "wall_time_s": time.perf_counter() - started,
               "val_samples": cb.val_samples}
    return TrialResult(state, reason, metrics, cb.history, model_path=model_path, traceback=traceback)


def _compiles_with_xla(trainer: keras.Model, jit: bool | str) -> bool:
    """Whether Keras will XLA-compile the trainer's steps: `jit`, with "auto" resolved as Keras resolves it (on
    JAX, and on TensorFlow with a GPU, when every layer supports XLA)."""
    return bool(trainer.jit_compile) if jit == "auto" else bool(jit)


def decay_after(lr: float, first: int, last: int) -> Any:
    """For keras.callbacks.LearningRateScheduler: `lr` up to epoch `first` (1-based), then a cosine from `lr`
    towards 0 over epochs first+1 .. last, each epoch at its midpoint (the last one a few percent of `lr`)."""
    span = max(1, last - first)

    def schedule(index: int, _current: float) -> float:  # Keras passes the 0-based epoch index
        done = index + 1 - first  # this epoch's place in the decay: 1 .. span
        if done <= 0:
            return float(lr)
        return float(lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, (done - 0.5) / span)))

    return schedule


def run_trial(task: TrialTask, splits: Splits, on_epoch: EpochHook,
              jit_compile: bool | str | None = None) -> TrialResult:
    """Train `task` on this process's framework; XLA as `train.jit_compile` says (nas.framework), except that a
    model XLA fails on before its first epoch ends trains again without it, noted in the result's tags."""
    jit = fw.jit_compile() if jit_compile is None else jit_compile
    result, xla_error = _run_trial(task, splits, on_epoch, jit)
    if xla_error is None:
        return result
    keras.backend.clear_session()
    result, _ = _run_trial(task, splits, on_epoch, False)
    result.tags["nas.jit_compile"] = (
        f"off: XLA could not compile this model ({xla_error[:400]})" if result.state != TrialState.FAILED
        else f"off: it failed with XLA ({xla_error[:400]}) and without it")
    return result


def _run_trial(task: TrialTask, splits: Splits, on_epoch: EpochHook,
               jit: bool | str) -> tuple[TrialResult, str | None]:
    """(result, None), or (a placeholder, the error) when training with XLA failed before any epoch ended."""
    started = time.perf_counter()
    arch, cfg = task.candidate.arch, task.candidate.train
    try:
        plan(arch)
    except InvalidArchitecture as exc:
        return TrialResult(TrialState.PRUNED, reason=exc.reason, metrics={"epochs_run": 0.0}), None
    try:
        resume = checkpoint.load(task.resume_from) if task.resume_from else None
    except (OSError, ValueError, KeyError) as exc:
        return TrialResult(TrialState.FAILED, reason=f"cannot resume from {task.resume_from}: {exc}"), None
    first = resume.epoch if resume else task.initial_epoch
    keras.utils.set_random_seed(task.seed)
    model = build_model(arch)
    trainer = for_training(model, Augmentation(**cfg.augment), pixel_max=arch.pixel_max, seed=task.seed)
    # Cheap early rungs: each span of epochs trains on its class-stratified share of the training data (one
    # span of all of it without stages); validation is the same throughout.
    stages = task.stages or ((task.epochs, 1.0),)
    spans = [(min(end, task.epochs), subset(splits.train, share)) for end, share in stages]
    if spans[-1][0] < task.epochs:  # the endgame's finalist trains on past train.epochs: on all the data
        spans.append((task.epochs, splits.train))
    # XLA compiles a step once per batch shape: whole batches spare every trial a second compile (nas.data.pipeline)
    whole = _compiles_with_xla(trainer, jit)
    # The schedule spans the trial's planned steps over every span (not where a prune or early stop ends it),
    # so a trial resumed at epoch `first` continues it where training straight through would be.
    steps, before, prev = 0, 0, 0
    for end, part in spans:
        n = steps_per_epoch(len(part.y), cfg.batch_size, whole)
        steps += (end - prev) * n
        before += max(0, min(end, first) - prev) * n
        prev = end
    compile_for_training(trainer, cfg, steps_per_epoch=steps, epochs=1, jit_compile=jit)
    cb = _EpochCallback(on_epoch, task, cfg.early_stopping, model)
    decay = [] if task.decay_from is None else [keras.callbacks.LearningRateScheduler(
        decay_after(cfg.learning_rate, task.decay_from, task.epochs))]
    if resume:
        try:
            checkpoint.restore(trainer, resume)
        except ValueError as exc:
            return TrialResult(TrialState.FAILED, reason=f"cannot resume from {task.resume_from}: {exc}"), None
        cb.restore(resume)
    else:
        start_at_epoch(trainer.optimizer, 1 if before else 0, before)
    eval_batch = max(cfg.batch_size, 256)
    val_ds = eval_dataset(splits.val, num_classes=arch.num_classes, batch_size=eval_batch, whole=whole)
    cb.val_loss_scale = padding(len(splits.val.y), eval_batch, whole).loss_scale
    cb.val_samples = float(len(splits.val.y))
    try:
        prev = 0
        for end, part in spans:
            if end > first:
                start = max(prev, first)
                batches = train_batches(part, num_classes=arch.num_classes, batch_size=cfg.batch_size,
                                        seed=task.seed, first_epoch=start, whole=whole)
                trainer.fit(batches.dataset, steps_per_epoch=batches.steps_per_epoch, validation_data=val_ds,
                            epochs=end, initial_epoch=start, callbacks=[cb, *decay], shuffle=False, verbose=0)
                if trainer.stop_training:  # pruned, paused, diverged, early-stopped, out of time: no further span
                    break
            prev = end
    except Exception as exc:  # out of memory mid-training and the like: keep the epochs that did run
        failure, tb = describe_failure(exc)
        if trainer.jit_compile and len(cb.history) == cb.resumed_at and not failure.startswith("out of memory"):
            return _result(TrialState.FAILED, failure, cb, started), failure  # XLA's, most likely: again without
        return _result(TrialState.FAILED, failure, cb, started, traceback=tb), None
    state, reason = cb.stopped or (TrialState.FINISHED, None)
    if task.checkpoint_to and (cb.paused or (state == TrialState.FINISHED and not cb.out_of_budget)):
        checkpoint.save(task.checkpoint_to, trainer, epoch=len(cb.history), best_weights=cb.best_weights,
                        progress=cb.progress())
    model_path: str | None = None
    best_value = cb.best.get(task.monitor)
    beats = task.save_threshold is None or (best_value is not None and (
        best_value > task.save_threshold if task.mode == "maximize" else best_value < task.save_threshold))
    finished = state == TrialState.FINISHED and cb.best_weights is not None
    # A paused trial's best epoch may be the search's best model too: the budget can end a search while its best
    # configurations wait at a rung (nas.objective keeps it if it beats every other trial)
    keep = bool(beats and task.save_model_to and cb.best_weights is not None and state in (
        TrialState.FINISHED, TrialState.PAUSED))
    measure = finished and bool(task.measure)
    shipped = None
    if measure or keep:
        model.set_weights(cb.best_weights)
        shipped = float32_copy(model, arch)
    if shipped is not None and keep and task.save_model_to:
        path = Path(task.save_model_to)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.keras")  # write then rename: a kill never leaves half a model
        shipped.save(tmp)
        tmp.replace(path)
        model_path = str(path)
    result = _result(state, reason, cb, started, model_path=model_path)
    if shipped is not None and measure:
        try:
            result.metrics.update(deployed.measure(shipped, splits, task.measure, on=task.measure_on,
                                                   calibration_samples=task.calibration_samples, seed=task.seed))
        except Exception as exc:  # a model LiteRT cannot take is no candidate for deployment
            failure, tb = describe_failure(exc)
            result.state, result.reason, result.traceback = (
                TrialState.PRUNED, f"cannot be measured as a TFLite model: {failure}"[:400], tb)
            if model_path:  # so it never becomes best/
                Path(model_path).unlink(missing_ok=True)
                result.model_path = None
    return result, None


def evaluate_model(model_path: str, splits: Splits, which: tuple[str, ...] = ("val", "test")) -> dict[str, float]:
    """Accuracy and loss of a saved model on the named splits (the test split only ever here, at the end)."""
    model = keras.models.load_model(model_path)
    num_classes = model.output_shape[-1]
    out: dict[str, float] = {}
    for name in which:
        split = getattr(splits, name)
        ds = eval_dataset(split, num_classes=num_classes, batch_size=256, whole=True)  # one compiled shape
        probs = model.predict(ds, verbose=0)[: len(split.y)]
        out[f"{name}_accuracy"] = float((probs.argmax(axis=1) == split.y).mean())
        out[f"{name}_samples"] = float(len(split.y))
    return out


def probe(candidate: Candidate, splits: Splits, steps: int = 4) -> float:
    """Seconds per training sample of `candidate` on this machine: `steps` timed training steps (augmentation
    included) after one untimed step that traces the graph. Seconds, not minutes: it feeds the budget plan."""
    import gc

    keras.backend.clear_session()
    gc.collect()
    arch, cfg = candidate.arch, candidate.train
    keras.utils.set_random_seed(0)
    model = build_model(arch)
    trainer = for_training(model, Augmentation(**cfg.augment), pixel_max=arch.pixel_max, seed=0)
    compile_for_training(trainer, cfg, steps_per_epoch=steps + 1, epochs=1, jit_compile=fw.jit_compile())
    n = min(len(splits.train.y), cfg.batch_size * (steps + 1))
    batches = iter(train_batches(Split(splits.train.x[:n], splits.train.y[:n]), num_classes=arch.num_classes,
                                 batch_size=cfg.batch_size, seed=0).dataset)
    trainer.train_on_batch(*next(batches))
    samples, started = 0, time.perf_counter()
    for _ in range(steps):
        x, y = next(batches)
        trainer.train_on_batch(x, y)
        samples += int(x.shape[0])
    return (time.perf_counter() - started) / samples
