"""Build a Keras 3 CNN from an `ArchConfig`. Pure: no I/O, no sampling, no global state.

The model takes raw pixels (scaling is its first layer) and holds no augmentation, so every exported form
(.keras, SavedModel, TFLite, ONNX) has the same input contract. Layer names follow the canonical Keras
examples so `model.summary()` reads block by block.
"""

from __future__ import annotations

import keras
from keras import layers

from nas.arch import ArchConfig, plan


def _activation(name: str, layer_name: str) -> layers.Layer:
    # Plain string activations only: a Lambda or custom layer would make the saved model need nas to load.
    return layers.Activation(name, name=layer_name)


def build_model(arch: ArchConfig) -> keras.Model:
    """The CNN for `arch`. Raises InvalidArchitecture (via `plan`) before touching Keras if shapes collapse."""
    plan(arch)
    inputs = keras.Input(shape=arch.input_shape, name="image")
    x = layers.Rescaling(1.0 / arch.pixel_max, name="rescale")(inputs)
    for i, b in enumerate(arch.blocks, start=1):
        for j in range(1, b.convs + 1):
            x = layers.Conv2D(
                b.filters,
                b.kernel_size,
                strides=b.strides if j == 1 else 1,
                padding="same",
                use_bias=not arch.batch_norm,
                name=f"block{i}_conv{j}",
            )(x)
            if arch.batch_norm:
                x = layers.BatchNormalization(momentum=arch.bn_momentum, name=f"block{i}_bn{j}")(x)
            x = _activation(arch.activation, f"block{i}_act{j}")(x)
        if b.pooling == "max":
            x = layers.MaxPooling2D(pool_size=2, name=f"block{i}_pool")(x)
        elif b.pooling == "avg":
            x = layers.AveragePooling2D(pool_size=2, name=f"block{i}_pool")(x)  # pool_size is required in 3.15
        if b.dropout > 0:
            x = layers.Dropout(b.dropout, name=f"block{i}_dropout")(x)
    if arch.head_type == "gap":
        x = layers.GlobalAveragePooling2D(name="head_gap")(x)
    else:
        x = layers.Flatten(name="head_flatten")(x)
    for k in range(1, arch.head_depth + 1):
        x = layers.Dense(arch.head_width, name=f"head_dense{k}")(x)
        x = _activation(arch.activation, f"head_act{k}")(x)
        if arch.head_dropout > 0:
            x = layers.Dropout(arch.head_dropout, name=f"head_dropout{k}")(x)
    # float32 under a mixed-precision policy too: a softmax in float16 saturates and its loss loses precision
    outputs = layers.Dense(arch.num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="nas_cnn")


def float32_copy(model: keras.Model, arch: ArchConfig) -> keras.Model:
    """`model` as a float32 model: itself under the float32 policy, else the same architecture rebuilt under it
    with `model`'s weights (which mixed precision keeps in float32 anyway). What is saved and exported is
    always this, so a loaded model computes in float32 whatever precision it was trained in."""
    policy = keras.config.dtype_policy()
    if policy.name == "float32":
        return model
    keras.config.set_dtype_policy("float32")
    try:
        clean = build_model(arch)
    finally:
        keras.config.set_dtype_policy(policy)
    clean.set_weights(model.get_weights())
    return clean
