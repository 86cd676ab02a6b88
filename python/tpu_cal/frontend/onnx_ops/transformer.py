"""Converters for BERT/ViT-style transformers (MatMul, Gemm, LayerNorm, masks, embeddings)."""
from __future__ import annotations

import numpy as np

from ..onnx_import import converter

