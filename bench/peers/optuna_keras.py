"""A hand-written Optuna + Keras search on Fashion-MNIST within a wall-clock budget.

TPE sampler, Hyperband pruner (min 1, max 12 epochs, factor 3); each trial reports val_accuracy after every
epoch and stops when `trial.should_prune()` says so. `study.optimize(timeout=...)` starts no trial after the
deadline, and a callback stops the running one at the deadline (after the current batch); that trial's best
epoch still stands as its value. The best trial's model (its best epoch's weights) is kept and evaluated once
on the 10,000 test images.

    .venv/bin/python bench/peers/optuna_keras.py --budget 30m
"""

# common first: the budget's clock starts when it is imported, before TensorFlow
from common import (ACTIVATIONS, BASE_FILTERS, BATCH_SIZES, DEPTH, DROPOUT, GROWTH, HEADS, KERNELS,  # noqa: I001
                    LEARNING_RATE, MAX_EPOCHS, POOLING, arguments, best_weights_callback, budget_callback,
                    build_cnn, finish, load_data)
import time

import keras
import optuna


def main() -> None:
    args = arguments(__doc__)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data()
    budget = budget_callback(args.deadline)
    best_path = args.workdir / "optuna_best.keras"
    best_value = [-1.0]

    class Pruning(keras.callbacks.Callback):
        def __init__(self, trial: optuna.Trial) -> None:
            super().__init__()
            self.trial = trial

        def on_epoch_end(self, epoch, logs=None):
            if budget.partial:  # an epoch cut short by the deadline is no fair comparison with its peers
                return
            self.trial.report(logs["val_accuracy"], epoch + 1)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"val_accuracy {logs['val_accuracy']:.4f} at epoch {epoch + 1}")

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        depth = trial.suggest_int("depth", *DEPTH)
        model = build_cnn(
            depth=depth,
            base_filters=trial.suggest_categorical("base_filters", BASE_FILTERS),
            growth=trial.suggest_categorical("growth", GROWTH),
            kernels=[trial.suggest_categorical(f"kernel_{i}", KERNELS) for i in range(depth)],
            pools=[trial.suggest_categorical(f"pool_{i}", POOLING) for i in range(depth)],
            dropouts=[trial.suggest_float(f"dropout_{i}", *DROPOUT) for i in range(depth)],
            activation=trial.suggest_categorical("activation", ACTIVATIONS),
            head=trial.suggest_categorical("head", HEADS),
            learning_rate=trial.suggest_float("learning_rate", *LEARNING_RATE, log=True),
        )
        keeper = best_weights_callback()
        model.fit(x_train, y_train, batch_size=trial.suggest_categorical("batch_size", BATCH_SIZES),
                  epochs=MAX_EPOCHS, validation_data=(x_val, y_val), callbacks=[budget, keeper, Pruning(trial)],
                  verbose=2)
        trial.set_user_attr("cut_by_budget", budget.cut)
        if keeper.best > best_value[0]:  # keep the best trial's model, at its best epoch
            keeper.restore()
            model.save(best_path)
            best_value[0] = keeper.best
        return keeper.best

    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=args.seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=MAX_EPOCHS, reduction_factor=3))
    study.optimize(objective, timeout=max(0.0, args.deadline - time.monotonic()))

    trials = study.trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    cut = sum(bool(t.user_attrs.get("cut_by_budget")) for t in complete)
    model = keras.models.load_model(best_path)
    finish(args, "optuna_keras", model, x_test, y_test,
           val_accuracy=round(study.best_value, 4),
           trials_started=len(trials), trials_finished=len(complete) - cut,
           epochs=round(budget.epochs, 1),
           notes=f"{pruned} pruned, {cut} cut by the budget (best epoch kept); best trial {study.best_trial.number}")


if __name__ == "__main__":
    main()
