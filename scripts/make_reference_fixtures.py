#!/usr/bin/env python3
"""Write the tiny reference-format fixtures that crates/data's import tests read.

The reference project stores its dataset as SRC/x/{domain,U_2d,U,p,dxyz}.pt, each a bare
tensor saved with torch.save, shaped (N, S, C, H, W) (dxyz: per sample). This script
writes the same layout with N=4, S=3, H=W=8 and values given by closed formulas that
the Rust tests recompute:

    code(n, s, c, h, w) = n*4096 + s*512 + c*128 + h*16 + w
    U[n, s, c, h, w]    = (-1 if c == 1 else 1) * code / 1024 * 1e-3   (float32)
    U_2d                = 0.5 * U, with vz (c == 2) = 0                  (float32)
    p[n, s, 0, h, w]    = (n*64 + s*16 + h + w) * 0.5                    (float32)
    domain[n, s, 0, h, w] = (n + s + h + w) % 3 != 0                     (bool)
    dxyz[n]             = [(1 + n) * 1e-7, (1 + n) * 1e-7, 5e-6]          (float64, (N, 3))

It also writes torch/dict_root.pt, a dictionary {"weights": arange(6).reshape(2, 3)},
to check that dictionary roots are read too.

Usage (needs the `torch` package from PyPI):
    python3 scripts/make_reference_fixtures.py
"""

from pathlib import Path

import torch

N, S, H, W = 4, 3, 8, 8
ROOT = Path(__file__).resolve().parent.parent / "crates" / "data" / "tests" / "fixtures"


def grid(c):
    n, s, cc, h, w = torch.meshgrid(
        torch.arange(N), torch.arange(S), torch.arange(c), torch.arange(H), torch.arange(W), indexing="ij"
    )
    return n.double(), s.double(), cc.double(), h.double(), w.double()


def main():
    x = ROOT / "reference" / "x"
    x.mkdir(parents=True, exist_ok=True)

    n, s, c, h, w = grid(3)
    code = n * 4096 + s * 512 + c * 128 + h * 16 + w
    sign = torch.where(c == 1, -1.0, 1.0)
    u = sign * code / 1024 * 1e-3
    u2d = torch.where(c == 2, 0.0, 0.5 * u)

    n1, s1, _, h1, w1 = grid(1)
    p = (n1 * 64 + s1 * 16 + h1 + w1) * 0.5
    domain = ((n1 + s1 + h1 + w1) % 3) != 0
    dxyz = torch.tensor([[(1 + i) * 1e-7, (1 + i) * 1e-7, 5e-6] for i in range(N)], dtype=torch.float64)

    torch.save(u.float(), x / "U.pt")
    torch.save(u2d.float(), x / "U_2d.pt")
    torch.save(p.float(), x / "p.pt")
    torch.save(domain, x / "domain.pt")
    torch.save(dxyz, x / "dxyz.pt")

    t = ROOT / "torch"
    t.mkdir(parents=True, exist_ok=True)
    torch.save({"weights": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, t / "dict_root.pt")
    print(f"wrote fixtures under {ROOT} with torch {torch.__version__}")


if __name__ == "__main__":
    main()
