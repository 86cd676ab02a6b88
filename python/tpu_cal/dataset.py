"""Calibration datasets: a folder (--dataset) or a list file (--data_list) of images, .npy or .npz samples.

Selection is deterministic: files are sorted by name, shuffled with a fixed seed and the first --input_num taken,
so the same folder and flags always give the same samples; the tune and inference samples are prefixes of that
order. Images are preprocessed as the module's attributes say; npz keys are matched to input names; every sample's
shape and dtype is checked, and errors name the file.
"""
from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass

import numpy as np

from .errors import UserError
from .preprocess import IMAGE_EXTS, Preprocess, load_inputs

SAMPLE_EXTS = IMAGE_EXTS + (".npy", ".npz")


@dataclass
class Sample:
    files: list[str]           # one file, or one per input (data_list lines with commas)
    where: str                 # for messages: the file, or "list.txt:12"


class Dataset:
    def __init__(self, inputs: list, preprocess: Preprocess, dataset: str | None = None,
                 data_list: str | None = None, seed: int = 0):
        """inputs: the graph's top.input nodes (name, shape, dtype)."""
        self.inputs, self.preprocess = inputs, preprocess
        if bool(dataset) == bool(data_list):
            raise UserError("give exactly one of --dataset and --data_list")
        self.samples = self._from_folder(dataset) if dataset else self._from_list(data_list)
        random.Random(seed).shuffle(self.samples)

    def _from_folder(self, folder: str) -> list[Sample]:
        if not os.path.isdir(folder):
            raise UserError(f"{folder}: " + ("not a folder (--dataset takes a folder; a list of files goes to "
                                             "--data_list)" if os.path.exists(folder) else "dataset folder not found"))
        try:
            names = sorted(os.listdir(folder))
        except OSError as e:
            raise UserError(f"{folder}: cannot read the dataset folder ({e.strerror})") from None
        files = [os.path.join(folder, n) for n in names if os.path.splitext(n)[1].lower() in SAMPLE_EXTS]
        if not files:
            raise UserError(f"{folder}: no images, .npy or .npz files in the dataset folder")
        if len(self.inputs) > 1 and any(not f.lower().endswith(".npz") for f in files):
            raise UserError(f"{folder}: the model has {len(self.inputs)} inputs; a dataset folder must then hold "
                            f".npz files with one array per input (or use --data_list)")
        return [Sample([f], f) for f in files]

    def _from_list(self, path: str) -> list[Sample]:
        if not os.path.isfile(path):
            raise UserError(f"{path}: data list not found")
        base = os.path.dirname(os.path.abspath(path))
        out = []
        with open(path) as f:
            for k, line in enumerate(f, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = [p.strip() for p in line.split(",")]
                parts = [p if os.path.isabs(p) else os.path.join(base, p) for p in parts]
                if len(parts) != 1 and len(parts) != len(self.inputs):
                    raise UserError(f"{path}:{k}: {len(parts)} files, the model has {len(self.inputs)} inputs")
                for p in parts:
                    if not os.path.isfile(p):
                        raise UserError(f"{path}:{k}: file '{p}' not found")
                out.append(Sample(parts, f"{path}:{k}"))
        if not out:
            raise UserError(f"{path}: the data list names no samples")
        return out

    def __len__(self):
        return len(self.samples)

    def take(self, n: int, what: str = "--input_num") -> list[Sample]:
        """The first n samples of the fixed order; asking for more than exist says so and uses all."""
        if n <= 0 or n > len(self.samples):
            if n > len(self.samples):
                print(f"note: {what} {n} is larger than the dataset ({len(self.samples)} samples); using all of "
                      f"them", file=sys.stderr)
            return list(self.samples)
        return self.samples[:n]

    def load(self, s: Sample) -> dict[str, np.ndarray]:
        """One sample as input name -> array with the batch axis of the module (checked)."""
        if len(s.files) == 1:
            return load_inputs(s.files[0], self.inputs, self.preprocess)
        out = {}
        for f, node in zip(s.files, self.inputs):
            out.update(load_inputs(f, [node], self.preprocess))
        return out

    def batches(self, samples: list[Sample], batch_size: int):
        """Yields (first sample index, feeds) with up to batch_size samples stacked on the batch axis."""
        for i in range(0, len(samples), batch_size):
            chunk = [self.load(s) for s in samples[i:i + batch_size]]
            # C order whatever the files' layout (an .npy saved from a transposed array): the kernels want it
            yield i, {n.name: np.ascontiguousarray(np.concatenate([c[n.name] for c in chunk])) for n in self.inputs}
