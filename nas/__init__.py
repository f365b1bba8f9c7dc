"""nas: neural architecture search for image-classification CNNs on Keras 3."""

__version__ = "0.1.0"
