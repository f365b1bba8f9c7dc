"""KerasTuner Hyperband on Fashion-MNIST within a wall-clock budget, as the KerasTuner tutorial would have it.

A HyperModel over a space like search_spaces/fashion_mnist.yaml; kt.Hyperband(objective val_accuracy,
max_epochs 12, factor 3). KerasTuner has no time budget, so this script adds one: a callback stops training
at the deadline (after the current batch), and the tuner starts no trial after it. The best model is then
taken as the tuner gives it (get_best_models: the best epoch's checkpoint of the best trial, no retraining)
and evaluated once on the 10,000 test images.

    .venv/bin/python bench/peers/keras_tuner_hyperband.py --budget 30m
"""

# common first: the budget's clock starts when it is imported, before TensorFlow
from common import (ACTIVATIONS, BASE_FILTERS, BATCH_SIZES, DEPTH, DROPOUT, GROWTH, HEADS, KERNELS,  # noqa: I001
                    LEARNING_RATE, MAX_EPOCHS, POOLING, arguments, budget_callback, build_cnn, finish, load_data)
import time

import keras
import keras_tuner as kt


class FashionHyperModel(kt.HyperModel):
    def build(self, hp):
        depth = hp.Int("depth", *DEPTH)
        return build_cnn(
            depth=depth,
            base_filters=hp.Choice("base_filters", BASE_FILTERS),
            growth=hp.Choice("growth", GROWTH),
            kernels=[hp.Choice(f"kernel_{i}", KERNELS) for i in range(depth)],
            pools=[hp.Choice(f"pool_{i}", POOLING) for i in range(depth)],
            dropouts=[hp.Float(f"dropout_{i}", *DROPOUT) for i in range(depth)],
            activation=hp.Choice("activation", ACTIVATIONS),
            head=hp.Choice("head", HEADS),
            learning_rate=hp.Float("learning_rate", *LEARNING_RATE, sampling="log"),
        )

    def fit(self, hp, model, *args, **kwargs):
        return model.fit(*args, batch_size=hp.Choice("batch_size", BATCH_SIZES), **kwargs)


class BudgetHyperband(kt.Hyperband):
    """kt.Hyperband that starts no new trial once the deadline has passed."""

    def __init__(self, *args, deadline, **kwargs):
        super().__init__(*args, **kwargs)
        self.deadline = deadline
        self.out_of_time = False

    def pre_create_trial(self):
        if time.monotonic() >= self.deadline:
            self.out_of_time = True
            # Oracle.create_trial answers STOPPED once max_trials trials exist, and search() then ends normally.
            self.oracle.max_trials = len(self.oracle.trials)


def main() -> None:
    args = arguments(__doc__)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data()

    tuner = BudgetHyperband(
        FashionHyperModel(), objective="val_accuracy", max_epochs=MAX_EPOCHS, factor=3,
        hyperband_iterations=1000,  # the tutorial's 1 ends after one sweep of the brackets; the budget ends this
        seed=args.seed, directory=args.workdir, project_name="keras_tuner_hyperband", overwrite=True,
        deadline=args.deadline)
    budget = budget_callback(args.deadline)
    tuner.search(x_train, y_train, validation_data=(x_val, y_val), callbacks=[budget], verbose=2)

    trials = list(tuner.oracle.trials.values())
    completed = [t for t in trials if t.status == "COMPLETED"]
    best_trial = tuner.oracle.get_best_trials(1)[0]
    configs = sum("tuner/trial_id" not in t.hyperparameters.values for t in trials)  # the rest are promotions
    model = tuner.get_best_models(1)[0]
    # The trial the deadline cut (if any) counts as started, not finished; its best epoch still competes.
    finish(args, "keras_tuner_hyperband", model, x_test, y_test,
           val_accuracy=round(float(best_trial.score), 4),
           trials_started=len(trials), trials_finished=len(completed) - int(budget.cut),
           epochs=round(budget.epochs, 1),
           notes=f"configs: {configs} (the other trials are Hyperband promotions, each resumed from its parent's "
                 f"best checkpoint); stopped by the budget: {'yes' if tuner.out_of_time or budget.cut else 'no'}")


if __name__ == "__main__":
    main()
