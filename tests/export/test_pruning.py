"""Keras-3-native magnitude pruning: exact target sparsity, zeros survive training, nothing left behind."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from nas.arch import ArchConfig, BlockConfig  # noqa: E402
from nas.builder import build_model  # noqa: E402
from nas.export import pruning  # noqa: E402


def _model_and_data():
    keras.utils.set_random_seed(0)
    model = build_model(ArchConfig((8, 8, 1), 10, (BlockConfig(16, convs=2), BlockConfig(32)), pixel_max=16.0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 16, size=(256, 8, 8, 1)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, 256), 10)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    return model, x, y


def test_schedule_is_polynomial_and_reaches_the_target() -> None:
    s = pruning.Schedule(final=0.8, begin_step=0, end_step=100)
    values = [s.at(t) for t in (0, 25, 50, 75, 100, 150)]
    assert values[0] == 0.0 and values[-2] == values[-1] == 0.8
    assert all(a < b for a, b in zip(values[:5], values[1:5]))
    assert values[1] > 0.8 * 0.25  # cubic: fast at first, slow near the end


def test_pruning_reaches_target_and_strip_leaves_plain_keras() -> None:
    model, x, y = _model_and_data()
    weights_before = len(model.weights)
    config_before = model.to_json()
    cb = pruning.MagnitudePruning(pruning.Schedule(final=0.75, begin_step=0, end_step=8, frequency=2))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[cb])
    # the optimizer re-applies the masks after every update: zeros stay zeros while training
    for layer in pruning.prunable(model):
        w = keras.ops.convert_to_numpy(layer.kernel)
        assert abs((w == 0).mean() - 0.75) < 0.01, layer.name
    pruning.strip(model)
    report = pruning.sparsity_report(model)
    assert abs(report["overall"] - 0.75) < 0.01 and set(report["per_layer"]) == {
        "block1_conv1", "block1_conv2", "block2_conv1", "head_dense1", "predictions"}
    assert len(model.weights) == weights_before  # the masks never became model variables
    assert model.to_json() == config_before  # no constraint in the saved config
    assert all(layer.kernel.constraint is None for layer in pruning.prunable(model))
    # further training no longer keeps zeros (the masks are gone), proving strip removed them
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert pruning.sparsity_report(model)["overall"] < 0.5
