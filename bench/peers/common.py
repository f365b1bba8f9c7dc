"""What the peer scripts share: the clock, the data, the CNN family, the budget callback, the result line.

Every peer script imports this module first, so its clock (`T0`) starts before TensorFlow is imported:
the budget covers everything the process does. The data is nas's own split of Fashion-MNIST (read-only use of
`nas.data`): the same 54,000 training and 6,000 validation images nas searches on (data.split_seed 0), and
the 10,000 test images, used once, for the winner only.
"""

from __future__ import annotations

import time

T0 = time.monotonic()

import argparse  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "fashion-mnist"
sys.path.insert(0, str(REPO))

# The space, as in search_spaces/fashion_mnist.yaml where the peers can say it simply (no augmentation, batch
# norm, head dense layer, optimizer choice, weight decay or label smoothing: a tutorial-style script has none).
DEPTH = (2, 4)
BASE_FILTERS = [16, 32, 48]
GROWTH = [1.5, 2.0]
KERNELS = [3, 5]
POOLING = ["max", "avg"]
DROPOUT = (0.0, 0.4)
ACTIVATIONS = ["relu", "swish", "gelu"]
HEADS = ["gap", "flatten"]
LEARNING_RATE = (3e-4, 3e-2)  # log scale
BATCH_SIZES = [64, 128]
MAX_EPOCHS = 12


def seconds(text: str) -> float:
    """'90s', '30m', '1h', '1h30m' or plain seconds -> seconds."""
    m = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not m or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m or 1h, got {text!r}")
    h, mi, s = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s


def arguments(doc: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=seconds, required=True, help="wall time for everything, e.g. 90s, 30m, 1h")
    ap.add_argument("--reserve", type=seconds, default=None,
                    help="kept at the end for loading and testing the winner (default: 5%% of the budget, at "
                         "most 60s: what nas keeps for measuring its winner)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nas-peers"))
    ap.add_argument("--out", type=Path, default=None, help="also write the result as JSON here")
    args = ap.parse_args()
    reserve = args.reserve if args.reserve is not None else min(60.0, 0.05 * args.budget)
    args.deadline = T0 + args.budget - reserve  # time.monotonic() at which training must stop
    args.workdir.mkdir(parents=True, exist_ok=True)
    return args


def load_data():
    """((x_train, y_train), (x_val, y_val), (x_test, y_test)): float32 in [0, 1], shape (n, 28, 28, 1)."""
    from nas.data.sources import load_source
    from nas.data.splits import make_splits

    if not DATA.exists():
        sys.exit(f"no {DATA}: run `make data` first")
    # The same call `nas search` makes for search_spaces/fashion_mnist.yaml (validation_fraction 0.1, split seed
    # 0; test_fraction is unused: Fashion-MNIST has its own test split).
    splits = make_splits(load_source(f"idx:{DATA}", REPO), validation_fraction=0.1, test_fraction=0.2, seed=0)
    scale = 1.0 / splits.pixel_max
    return tuple((s.x.astype("float32") * scale, s.y) for s in (splits.train, splits.val, splits.test))


def build_cnn(depth: int, base_filters: int, growth: float, kernels: list[int], pools: list[str],
              dropouts: list[float], activation: str, head: str, learning_rate: float):
    """Conv blocks (conv, pool, dropout), then GAP or flatten and a softmax; Adam."""
    import keras

    inputs = keras.Input((28, 28, 1))
    x = inputs
    for i in range(depth):
        x = keras.layers.Conv2D(round(base_filters * growth ** i), kernels[i], padding="same", activation=activation)(x)
        x = (keras.layers.MaxPooling2D if pools[i] == "max" else keras.layers.AveragePooling2D)(2)(x)
        x = keras.layers.Dropout(dropouts[i])(x)
    x = keras.layers.GlobalAveragePooling2D()(x) if head == "gap" else keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def budget_callback(deadline: float):
    """A Keras callback that stops training at `deadline`, checked after every batch and every epoch (so the
    overrun is one batch plus that epoch's validation), and counts the epochs trained over all fits it sees (a
    cut epoch counts as its share of batches). Keras still validates a cut epoch; that result stands."""
    import keras

    class Budget(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs = 0.0
            self.cut = False  # the last fit was stopped by the deadline before its last epoch ended
            self.partial = False  # the last epoch was cut short

        def __deepcopy__(self, memo):  # KerasTuner deep-copies callbacks per trial; the tally must be shared
            return self

        def on_train_begin(self, logs=None):
            self.cut = False

        def on_epoch_begin(self, epoch, logs=None):
            self.batches = 0

        def on_train_batch_end(self, batch, logs=None):
            self.batches = batch + 1
            if time.monotonic() >= deadline:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            self.epochs += self.batches / self.params["steps"]
            self.partial = self.batches < self.params["steps"]
            if time.monotonic() >= deadline:  # also after validation: start no epoch past the deadline
                self.model.stop_training = True
            self.cut = self.model.stop_training and (self.partial or epoch + 1 < self.params["epochs"])

    return Budget()


def best_weights_callback():
    """Keeps the weights of the epoch with the best val_accuracy (restore them with `.restore()`)."""
    import keras

    class BestWeights(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.best, self.weights = -1.0, None

        def on_epoch_end(self, epoch, logs=None):
            if logs["val_accuracy"] > self.best:
                self.best, self.weights = logs["val_accuracy"], self.model.get_weights()

        def restore(self):
            self.model.set_weights(self.weights)

    return BestWeights()


def finish(args: argparse.Namespace, tool: str, model, x_test, y_test, **fields) -> None:
    """Evaluate the winner once on the test images, then print (and write) the result."""
    test_loss, test_acc = model.evaluate(x_test, y_test, batch_size=512, verbose=0)
    result = {"tool": tool, "budget_s": args.budget, "test_accuracy": round(float(test_acc), 4), **fields,
              "wall_s": round(time.monotonic() - T0, 1)}
    print("RESULT " + json.dumps(result), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
