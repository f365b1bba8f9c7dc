"""The floor: keras-io's "Simple MNIST convnet" trained on Fashion-MNIST for the whole wall-clock budget.

Two conv layers (32 and 64 filters, 3x3, relu), each followed by 2x2 max pooling, flatten, dropout 0.5, a
softmax layer; Adam, batch 128. Epochs until the deadline (checked after every batch); the weights of the
epoch with the best val_accuracy are restored and evaluated once on the 10,000 test images.

    .venv/bin/python bench/peers/floor_convnet.py --budget 30m
"""

# common first: the budget's clock starts when it is imported, before TensorFlow
from common import arguments, best_weights_callback, budget_callback, finish, load_data  # noqa: I001

import keras
from keras import layers


def main() -> None:
    args = arguments(__doc__)
    keras.utils.set_random_seed(args.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = load_data()
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(loss="sparse_categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
    budget, keeper = budget_callback(args.deadline), best_weights_callback()
    model.fit(x_train, y_train, batch_size=128, epochs=100_000, validation_data=(x_val, y_val),
              callbacks=[budget, keeper], verbose=2)
    keeper.restore()
    finish(args, "floor_convnet", model, x_test, y_test, val_accuracy=round(keeper.best, 4),
           trials_started=1, trials_finished=1, epochs=round(budget.epochs, 1),
           notes="one model trained until the budget; best val epoch restored")


if __name__ == "__main__":
    main()
