"""Similarity between a reference tensor and another (float vs ONNX Runtime, float vs quantized)."""
from __future__ import annotations

import numpy as np


def cosine(a, b) -> float:
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(a @ b / (na * nb))


def euclid_similarity(a, b) -> float:
    """1 - |a-b| / max(|a|, |b|): 1 for equal tensors, 0 when the error is as large as the tensors."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    den = max(np.linalg.norm(a), np.linalg.norm(b))
    return 1.0 if den == 0 else float(1 - np.linalg.norm(a - b) / den)


def snr_db(ref, x) -> float:
    """Signal-to-noise ratio in dB of x against ref (inf when equal)."""
    ref = np.asarray(ref, np.float64).ravel()
    noise = np.sum((ref - np.asarray(x, np.float64).ravel()) ** 2)
    sig = np.sum(ref ** 2)
    if noise == 0:
        return float("inf")
    return float(10 * np.log10(sig / noise)) if sig > 0 else float("-inf")


def max_abs_rel(ref, x) -> float:
    """Max abs error relative to the reference's range (max - min); 0 for a constant, equal tensor."""
    ref = np.asarray(ref, np.float64)
    err = float(np.abs(ref - np.asarray(x, np.float64)).max()) if ref.size else 0.0
    rng = float(ref.max() - ref.min()) if ref.size else 0.0
    return err / rng if rng > 0 else err
