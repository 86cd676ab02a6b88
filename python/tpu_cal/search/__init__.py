"""Searches over the quantized simulation: search_threshold, search_qtable, sensitive layers (`engine` is what
they share). `prepare` is the hook `tpu-cal calibrate --search` calls."""
from .dispatch import prepare

__all__ = ["prepare"]
