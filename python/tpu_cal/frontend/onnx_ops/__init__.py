"""ONNX converters, one module per op family; importing the package registers them all."""
from . import common, nn, transformer  # noqa: F401
