#!/usr/bin/env python3
"""How much of vz do simple inputs explain? Linear least-squares fits of vz over the fluid,
fitted on the training split and scored (relative L2 error) on the validation split of a
fiberflow dataset that stores `p_2d` (any dataset made by `fiberflow generate`).

  python3 scripts/vz_regression.py runs/data

Three feature sets, each multiplied by d and d² (d: in-plane distance to the nearest
fibre pixel, the shape of a pore-scale flow profile):
  p_2d  the slice-to-slice change of the per-slice 2D pressure (an input fiberflow has),
  p     the same change of the 3D pressure (an oracle: unknown at prediction time),
  lean  the nearest fibre's centre-line slope along z from the generator's analytic paths,
        times the 2D velocity (an upper bound for what fibre lean measured from masks gives).
Then, what a latent pixel would have to carry: vz fitted on each 4×4 patch of each slice
with its own best coefficients (an oracle decoder that gets exactly those numbers from the
latent): a constant, a·d + b·d², or a + b·x + c·y.
Needs numpy, scipy and safetensors.
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from scipy import ndimage


def distance(mask):
    """Periodic in-plane distance (pixels) from fluid pixels to the nearest fibre pixel."""
    h, w = mask.shape
    return ndimage.distance_transform_edt(np.tile(mask, (3, 3)))[h : 2 * h, w : 2 * w]


def central(field, s):
    n = field.shape[0]
    return field[(s + 1) % n] - field[(s - 1) % n]


def lean_field(record, s, pitch_um, shape):
    """Slope (dc/dz) of the nearest fibre's centre line at slice s, per pixel."""
    ms = record["extra"]["microstructure"]
    period, window = ms["z_period_um"], ms["window_um"]
    h, w = shape
    yy, xx = np.meshgrid(
        (np.arange(h) + 0.5) * window / h, (np.arange(w) + 0.5) * window / w, indexing="ij"
    )
    z = s * pitch_um
    best = np.full(shape, np.inf)
    slope = np.zeros(shape + (2,))
    for fibre in ms["fibres"]:
        off, sl = np.zeros(2), np.zeros(2)
        for m in fibre["modes"]:
            k = 2 * np.pi * m["periods"] / period
            a = k * z + m["phase"]
            d = np.array([np.cos(m["direction"]), np.sin(m["direction"])])
            off += m["amplitude_um"] * np.sin(a) * d
            sl += m["amplitude_um"] * k * np.cos(a) * d
        c = (np.array(fibre["centre_um"]) + off) % window
        dx = (xx - c[0] + window / 2) % window - window / 2
        dy = (yy - c[1] + window / 2) % window - window / 2
        gap = np.hypot(dx, dy) - fibre["radius_um"]
        closer = gap < best
        best[closer] = gap[closer]
        slope[closer] = sl
    return slope


def features(dataset, index, kind, pitch_um):
    sample = load_file(dataset / "samples" / f"{index:06d}.safetensors")
    record = json.loads((dataset / "samples" / f"{index:06d}.json").read_text())
    mask = sample["domain"][:, 0] > 0.5
    xs, ys = [], []
    for s in range(mask.shape[0]):
        d = distance(mask[s])
        if kind == "lean":
            slope = lean_field(record, s, pitch_um, mask.shape[1:])
            u2d = sample["U_2d"][s]
            base = [slope[..., a] * u2d[c] for a in range(2) for c in range(2)]
        else:
            change = np.where(mask[s], central(sample[kind][:, 0], s), 0.0)
            base = [change, ndimage.uniform_filter(change, 5, mode="wrap")]
        cols = [b * d**k for b in base for k in (1, 2)]
        xs.append(np.stack(cols, -1)[mask[s]])
        ys.append(sample["U"][s, 2][mask[s]])
    return np.concatenate(xs), np.concatenate(ys)


def patch_fits(dataset, indices, patch=4):
    """Relative L2 error of vz when every patch×patch patch gets its own least-squares fit."""
    err = {"constant": 0.0, "a d + b d^2": 0.0, "a + b x + c y": 0.0}
    total = 0.0
    for i in indices:
        sample = load_file(dataset / "samples" / f"{i:06d}.safetensors")
        mask = sample["domain"][:, 0] > 0.5
        h, w = mask.shape[1:]
        yy, xx = np.mgrid[0:h, 0:w]
        for s in range(mask.shape[0]):
            d = distance(mask[s])
            vz = sample["U"][s, 2]
            for y0 in range(0, h, patch):
                for x0 in range(0, w, patch):
                    win = (slice(y0, y0 + patch), slice(x0, x0 + patch))
                    fluid = mask[s][win]
                    if not fluid.any():
                        continue
                    y = vz[win][fluid]
                    dd, one = d[win][fluid], np.ones(fluid.sum())
                    total += (y**2).sum()
                    for name, x in (
                        ("constant", one[:, None]),
                        ("a d + b d^2", np.stack([dd, dd**2], -1)),
                        ("a + b x + c y", np.stack([one, xx[win][fluid], yy[win][fluid]], -1)),
                    ):
                        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
                        err[name] += ((x @ coef - y) ** 2).sum()
    return {name: np.sqrt(e / total) for name, e in err.items()}


def main():
    dataset = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/data")
    splits = json.loads((dataset / "splits.json").read_text())
    pitch_um = json.loads((dataset / "header.json").read_text())["voxel_size"]["dz_m"] * 1e6
    for kind in ("p_2d", "p", "lean"):
        parts = {
            name: [features(dataset, i, kind, pitch_um) for i in splits[name]]
            for name in ("train", "val")
        }
        (xt, yt), (xv, yv) = (
            (np.concatenate([a for a, _ in parts[n]]), np.concatenate([b for _, b in parts[n]]))
            for n in ("train", "val")
        )
        scale = np.abs(xt).mean(0) + 1e-30
        coef, *_ = np.linalg.lstsq(xt / scale, yt, rcond=None)
        err = np.linalg.norm(xv / scale @ coef - yv) / np.linalg.norm(yv)
        print(f"{kind:5}: validation relative L2 error of vz {err:.3f}, explains {1 - err**2:.0%}")
    for name, err in patch_fits(dataset, splits["val"]).items():
        print(f"per 4x4 patch, {name}: validation relative L2 error of vz {err:.3f}")


if __name__ == "__main__":
    main()
