"""The declarative search spec: schema (`model`), dimension forms (`dims`) and the YAML loader (`loader`)."""

from nas.spec.loader import LoadedSpec, load_spec, parse_spec
from nas.spec.model import Spec

__all__ = ["LoadedSpec", "Spec", "load_spec", "parse_spec"]
