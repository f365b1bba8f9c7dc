"""Training-time augmentation: Keras' backend-agnostic Random* layers, in a training-only wrapper.

The wrapper puts the layers in front of the candidate model for `fit`, so they run inside the training step
(on the accelerator when there is one, on any Keras backend) and draw from seed generators whose state is a
variable of the wrapper: a checkpoint of the wrapper's variables resumes the augmentation exactly where it was.
They are inactive at inference (Keras calls them with training=False), and only the candidate model itself is
ever saved or exported, so no artifact contains them.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")
FILL_MODES = ("reflect", "constant", "nearest", "wrap")


@dataclass(frozen=True)
class Augmentation:
    """Random training-time transforms; factors as in keras.layers.Random* (0 switches one off)."""

    flip: str = "none"  # none | horizontal | vertical | horizontal_and_vertical
    rotation: float = 0.0  # fraction of a full turn, as keras.layers.RandomRotation's factor
    translation: float = 0.0  # fraction of height/width
    zoom: float = 0.0  # fraction
    contrast: float = 0.0  # factor
    fill_mode: str = "reflect"  # reflect | constant | nearest | wrap

    def __post_init__(self) -> None:
        # The spec validates these first; this guards direct construction with a message that quotes the value.
        if self.flip not in FLIP_MODES:
            raise ValueError(f"Augmentation.flip must be one of {FLIP_MODES}, but got {self.flip!r}.")
        if self.fill_mode not in FILL_MODES:
            raise ValueError(f"Augmentation.fill_mode must be one of {FILL_MODES}, but got {self.fill_mode!r}.")
        for name, upper in (("rotation", 1.0), ("translation", 1.0), ("zoom", 1.0), ("contrast", 1.0)):
            value = getattr(self, name)
            if not 0.0 <= value <= upper:
                raise ValueError(f"Augmentation.{name} must satisfy 0 <= {name} <= {upper}, but got {value}.")

    @property
    def active(self) -> bool:
        return self.flip != "none" or any((self.rotation, self.translation, self.zoom, self.contrast))


def augmentation_layers(augmentation: Augmentation, *, pixel_max: float, seed: int) -> list[keras.layers.Layer]:
    """The active transforms as Keras layers, each with its own seed derived from `seed`. dtype float32 is pinned
    so a mixed-precision policy does not turn the pixels into float16 before the model's Rescaling."""
    a = augmentation
    layers: list[keras.layers.Layer] = []
    if a.flip != "none":
        layers.append(keras.layers.RandomFlip(a.flip, seed=seed, dtype="float32"))
    if a.rotation:
        layers.append(keras.layers.RandomRotation(a.rotation, fill_mode=a.fill_mode, seed=seed + 1, dtype="float32"))
    if a.translation:
        layers.append(keras.layers.RandomTranslation(a.translation, a.translation, fill_mode=a.fill_mode,
                                                     seed=seed + 2, dtype="float32"))
    if a.zoom:  # width_factor=None keeps the aspect ratio
        layers.append(keras.layers.RandomZoom(a.zoom, fill_mode=a.fill_mode, seed=seed + 3, dtype="float32"))
    if a.contrast:  # value_range must match the raw pixels, else contrast clips everything to [0, 255]
        layers.append(keras.layers.RandomContrast(a.contrast, value_range=(0, pixel_max), seed=seed + 4,
                                                  dtype="float32"))
    if keras.backend.backend() == "jax":
        # Keras marks translation, rotation and zoom as not XLA-compilable because TensorFlow's image-transform op
        # has no XLA kernel; on JAX they are plain jnp code that XLA compiles. Left marked, they would switch XLA off
        # for the whole training step, and JAX would then run it op by op: ~50x slower.
        for layer in layers:
            layer.supports_jit = True
    return layers


def for_training(model: keras.Model, augmentation: Augmentation, *, pixel_max: float, seed: int) -> keras.Model:
    """What `fit` trains: `model` behind the augmentation layers (`model` itself when none is active). Training
    the wrapper trains `model`'s own variables; save and export `model`, never the wrapper."""
    layers = augmentation_layers(augmentation, pixel_max=pixel_max, seed=seed)
    if not layers:
        return model
    return keras.Sequential([keras.Input(model.input_shape[1:], dtype="float32"), *layers, model],
                            name=f"{model.name}_training")
