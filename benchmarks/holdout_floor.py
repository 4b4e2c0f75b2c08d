"""How far held-out closure can go: two checks beside ``holdout_closure.py`` (whose reading, binning
and chi2 they reuse, sharing nothing with the package).

1. The statistical floor of the integer variables (njets, the lepton multiplicity): weights that are
   exactly the per-bin ratio of the *training* files' distributions, the most any reweighter trained
   on them can know about that variable, scored on the held-out files.
2. A temperature scan of trained NN weights (``--predictions``): w -> w**t, renormalised, i.e. the
   classifier's logit scaled by t, the calibration a fit on the validation split could apply.

    python benchmarks/holdout_floor.py --primary hold_A.root --secondary hold_B.root \
        --train-primary ttbar_A_large.root --train-secondary ttbar_B_large.root [--predictions held/predictions.h5]
"""

from __future__ import annotations

import argparse

import numpy as np
from holdout_closure import chi2, edges_for, entries, nn_weights, read, table  # benchmarks/ is on sys.path

TEMPERATURES = (0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def binned_ratio(train_a, train_b, held_a, held_b, name: str, bins: int) -> tuple[float, float, int]:
    """(chi2/ndf with the training files' per-bin ratio as weights, unweighted chi2/ndf, ndf)."""
    edges = edges_for(name, held_b[name], bins)
    ha, _ = np.histogram(train_a[name], edges, weights=train_a["weight"])
    hb, _ = np.histogram(train_b[name], edges, weights=train_b["weight"])
    ratio = np.where(ha > 0, (hb / hb.sum()) / np.maximum(ha / ha.sum(), 1e-12), 1.0)
    w = ratio[np.clip(np.searchsorted(edges, held_a[name], side="right") - 1, 0, len(ratio) - 1)]
    w = w * len(w) / w.sum()
    c, ndf = chi2(held_a[name], held_a["weight"] * w, held_b[name], held_b["weight"], edges)
    c0, _ = chi2(held_a[name], held_a["weight"], held_b[name], held_b["weight"], edges)
    return c / ndf, c0 / ndf, ndf


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--primary", nargs="+", required=True)
    p.add_argument("--secondary", nargs="+", required=True)
    p.add_argument("--train-primary", nargs="+", required=True)
    p.add_argument("--train-secondary", nargs="+", required=True)
    p.add_argument("--predictions", help="predictions.h5 of the trained model applied to --primary/--secondary")
    p.add_argument("--bins", type=int, default=20)
    args = p.parse_args(argv)
    held_a, held_b = read(args.primary), read(args.secondary)
    train_a, train_b = read(args.train_primary), read(args.train_secondary)
    for name in ("njets", "nleps"):
        floor, unweighted, ndf = binned_ratio(train_a, train_b, held_a, held_b, name, args.bins)
        print(f"{name}: training files' binned ratio {floor:.2f}, unweighted {unweighted:.2f} (chi2/ndf, ndf {ndf})")
    if args.predictions:
        w = nn_weights(args.predictions, args.primary, entries(args.primary))
        print("t | " + " | ".join(["total", "njets", "nleps", "jet_m"]))
        for t in TEMPERATURES:
            wt = w**t
            result = table(held_a, held_b, wt * len(wt) / wt.sum(), args.bins)
            figures = [result["total"], result["njets"], result["objects"]["nleps"], result["objects"]["jet_m"]]
            print(f"{t} | " + " | ".join(f"{f['chi2_ndf']:.2f}" for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
