#!/usr/bin/env python3
"""Check a `fiberflow dataset export DIR --format reference --out OUT` with PyTorch itself.

Loads every OUT/x/*.pt with torch.load (its default weights_only unpickler, and again
memory-mapped), checks the shapes and dtypes the reference project's loaders expect,
compares the values with the dataset's own NumPy export (`fiberflow dataset export DIR
--out NPY`), and checks that the reference's split -- Python's random.Random(2024)
shuffle of the positions, 70/15/15 -- selects the dataset's train/val/test samples.

Usage (needs the `torch` package, e.g. the venv of scripts/setup-libtorch.sh):
    python3 scripts/check_reference_export.py DATASET OUT NPY
Prints "ok" and exits 0, or raises.
"""

import ast
import json
import random
import struct
import sys
import zipfile
from pathlib import Path

import torch


def npy(path):
    """A float32/float64/uint64 .npy file as a torch tensor (no NumPy needed)."""
    raw = path.read_bytes()
    assert raw[:6] == b"\x93NUMPY" and raw[6] == 1, f"{path}: not a version-1 .npy file"
    header_len = struct.unpack("<H", raw[8:10])[0]
    header = ast.literal_eval(raw[10 : 10 + header_len].decode("latin1"))
    dtype = {"<f4": torch.float32, "<f8": torch.float64, "<u8": torch.int64}[header["descr"]]
    assert not header["fortran_order"]
    body = bytearray(raw[10 + header_len :])
    return torch.frombuffer(body, dtype=dtype).reshape(header["shape"])


def main(dataset, out, npy_dir):
    dataset, out, npy_dir = Path(dataset), Path(out), Path(npy_dir)
    order = json.loads((out / "fiberflow_export.json").read_text())["order"]
    n = len(order)
    loaded = {}
    for name in ["domain", "U_2d", "U", "p", "dxyz"]:
        path = out / "x" / f"{name}.pt"
        t = torch.load(path)
        m = torch.load(path, mmap=True)
        assert torch.equal(t, m), name
        assert zipfile.ZipFile(path).testzip() is None, name
        loaded[name] = t
    s, h, w = loaded["U"].shape[1], loaded["U"].shape[3], loaded["U"].shape[4]
    # Generated datasets export float32 fields and a bool mask; an imported reference
    # dataset gets its source files' dtypes (and a mask without channel axis) back.
    floats = (torch.float32, torch.float64)
    assert loaded["U"].shape == (n, s, 3, h, w) and loaded["U"].dtype in floats
    assert loaded["U_2d"].shape == (n, s, 3, h, w) and loaded["U_2d"].dtype in floats
    assert loaded["p"].shape[:2] == (n, s) and loaded["p"].dtype in floats
    assert loaded["domain"].shape[:2] == (n, s) and loaded["domain"].shape[-2:] == (h, w)
    assert loaded["domain"].dtype in (torch.bool, torch.uint8) + floats
    assert loaded["dxyz"].shape == (n, 3) and loaded["dxyz"].dtype == torch.float64
    # Values: position k holds dataset sample order[k], as the NumPy export has it.
    index = npy(npy_dir / "indices.npy").tolist()
    row = {int(i): r for r, i in enumerate(index)}
    rows = torch.tensor([row[i] for i in order])
    for name in ["U_2d", "U", "p"]:
        want = npy(npy_dir / f"{name}.npy")[rows]
        assert torch.equal(loaded[name].to(torch.float32).reshape(want.shape), want), name
    want = npy(npy_dir / "domain.npy")[rows] != 0
    assert torch.equal((loaded["domain"] != 0).reshape(want.shape), want)
    assert torch.equal(loaded["dxyz"], npy(npy_dir / "dxyz.npy")[rows])
    # The reference's split of the positions is the dataset's split.
    positions = list(range(n))
    random.Random(2024).shuffle(positions)
    n_train, n_val = int(0.7 * n), int(0.15 * n)
    parts = [positions[:n_train], positions[n_train : n_train + n_val], positions[n_train + n_val :]]
    splits = json.loads((dataset / "splits.json").read_text())
    for name, part in zip(["train", "val", "test"], parts):
        assert sorted(order[p] for p in part) == sorted(splits[name]), name
    stats = json.loads((out / "statistics.json").read_text())
    assert stats["U_per_component"]["max_w"] > 0 and stats["U"]["max"] > 0
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:4])
