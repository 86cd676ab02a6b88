"""Converters for convolutional classifiers and detectors (conv family, pools, resize, pad, split, ...)."""
from __future__ import annotations

import numpy as np

from ..onnx_import import converter

