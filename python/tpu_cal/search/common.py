"""What the searches share besides the engine: option checks, the post-process file, compared layers, the
inference samples, the float type of float layers, TPU-MLIR-style log files."""
from __future__ import annotations

import difflib
import importlib.util
import os

import numpy as np

from ..chips import Chip, mix_float_type
from ..dataset import Dataset
from ..errors import UserError
from ..fileio import write_text
from ..graph import Graph
from ..thresholds import canonical_method

# quantize_method_list spellings (seed 002) -> our method keys
SEARCH_METHODS = {"KL": "kl", "MSE": "mse", "MAX": "max", "PERCENTILE9999": "percentile9999"}
LOG_NAMES = {"kl": "KL", "mse": "MSE", "max": "MAX", "percentile9999": "Percentile9999"}
MIX_MODES = ("8_16", "4_8")


def parse_bool(text) -> bool:
    """--transformer False / True (TPU-MLIR passes the word)."""
    if isinstance(text, bool):
        return text
    t = str(text).strip().lower()
    if t in ("true", "1", "yes", "on"):
        return True
    if t in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"'{text}' is not True or False")


def method_list(text: str) -> list[str]:
    """'KL,MSE' -> ['kl', 'mse'], in the given order, without repeats; an error naming unknown entries."""
    out = []
    for tok in [t.strip() for t in str(text).split(",") if t.strip()]:
        key = SEARCH_METHODS.get(tok.upper())
        if key is None:
            raise UserError(f"--quantize_method_list: unknown method '{tok}' (choose from KL, MSE, MAX, "
                            f"Percentile9999)")
        if key not in out:
            out.append(key)
    if not out:
        raise UserError("--quantize_method_list is empty (choose from KL, MSE, MAX, Percentile9999)")
    return out


def check_expected_cos(v: float) -> float:
    v = float(v)
    if not (0.0 <= v <= 1.0):
        raise UserError(f"--expected_cos {v} is outside [0, 1]")
    return v


def float_type(chip: Chip, fp_type: str) -> str:
    """The precision of float layers (--fp_type): `chips.mix_float_type`, shared with the pattern qtables."""
    return mix_float_type(chip, fp_type)


def _closest(name: str, pool) -> str:
    close = difflib.get_close_matches(name, sorted(pool), n=3, cutoff=0.5)
    return f" (closest: {', '.join(close)})" if close else ""


def check_names(graph: Graph, names, flag: str) -> None:
    """An error listing every name that is no tensor of the graph, with the closest names."""
    pool = {n.name for n in graph.nodes if n.op not in ("top.weight", "top.none")}
    bad = [n for n in names if n not in pool]
    if bad:
        raise UserError(f"{flag}: {len(bad)} unknown layer name(s): "
                        + "; ".join(f"'{b}'{_closest(b, pool)}" for b in bad[:5]))


def compare_layers(text: str | None, graph: Graph) -> list[tuple[str, float]] | None:
    """--global_compare_layers 'a,b' or 'a:0.3,b:0.7' -> [(name, weight)] (equal weights when none are given);
    None for the model outputs."""
    if not text:
        return None
    out = []
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        name, _, w = tok.rpartition(":") if ":" in tok else (tok, "", "")
        try:
            weight = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--global_compare_layers: weight '{w}' of '{name}' is not a number") from None
        if not (weight > 0 and np.isfinite(weight)):
            raise UserError(f"--global_compare_layers: weight of '{name}' must be positive, got {w}")
        out.append((name, weight))
    if not out:
        return None
    check_names(graph, [n for n, _ in out], "--global_compare_layers")
    return out


def load_post_process(path: str | None):
    """The PostProcess(data) function of a user's file; an error naming the file when it has none."""
    if not path:
        return None
    if not os.path.isfile(path):
        raise UserError(f"{path}: post-process file not found")
    spec = importlib.util.spec_from_file_location("tpu_cal_user_post_process", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:      # the user's code: any failure is theirs to fix, named with the file
        raise UserError(f"{path}: the post-process file fails to load ({type(e).__name__}: {e})") from None
    fn = getattr(mod, "PostProcess", None)
    if not callable(fn):
        raise UserError(f"{path}: no function PostProcess(data) in the post-process file")

    def call(data):
        try:
            return fn(data)
        except Exception as e:
            raise UserError(f"{path}: PostProcess failed ({type(e).__name__}: {e})") from None
    return call


def inference_feeds(ds: Dataset, n: int) -> tuple[dict[str, np.ndarray], int]:
    """The first n samples of the dataset's fixed order stacked per input (and how many there are)."""
    samples = ds.take(n, "--inference_num")
    loaded = [ds.load(s) for s in samples]
    return {k.name: np.concatenate([x[k.name] for x in loaded]) for k in ds.inputs}, len(samples)


def canonical(methods: list[str]) -> list[str]:
    return [canonical_method(m) for m in methods]


class Log:
    """Lines as Python's logging writes them at INFO level (TPU-MLIR's Search_Qtable and friends)."""

    def __init__(self):
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(f"INFO:root:{msg}")

    def write(self, path: str) -> None:
        write_text(path, "\n".join(self.lines) + "\n")


