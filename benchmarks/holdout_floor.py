"""How far held-out closure can go: three checks beside ``holdout_closure.py`` (whose reading, binning
and chi2 they reuse, sharing nothing with the package).

1. The statistical floor of the integer variables (njets, the lepton multiplicity): weights that are
   exactly the per-bin ratio of the *training* files' distributions, the most any reweighter trained
   on them can know about that variable, scored on the held-out files.
2. A temperature scan of trained NN weights (``--predictions``): w -> w**t, renormalised, i.e. the
   classifier's logit scaled by t, the calibration a fit on the validation split could apply.
3. In-sample against out-of-sample (``--training-predictions``, the training job's own
   ``predictions.h5``): the same table on the training files' train split, which the weights were
   fitted to, and on their validation + test split, for the NN and the job's baseline.  Weights that
   close their own training events better than held-out ones carry those events' fluctuations.

    python benchmarks/holdout_floor.py --primary hold_A.root --secondary hold_B.root \
        --train-primary ttbar_A_large.root --train-secondary ttbar_B_large.root [--predictions held/predictions.h5] \
        [--training-predictions large/predictions.h5]
"""

from __future__ import annotations

import argparse
import json

import h5py
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


def split_of(path: str, sample: int, files: list[str], sizes: list[int], column: str) -> dict[str, np.ndarray]:
    """``split`` and ``column`` of a training job's predictions for one sample's events, in the order
    ``read`` concatenates ``files`` (split -1 for entries the job did not keep)."""
    with h5py.File(path, "r") as f:
        names = [n.rsplit("/", 1)[-1] for n in json.loads(f.attrs["source_files"])[str(sample)]]
        sel = f["sample"][:] == sample
        fidx, entry, split, value = f["file_index"][:][sel], f["entry"][:][sel], f["split"][:][sel], f[column][:][sel]
    out = {"split": np.full(sum(sizes), -1), column: np.ones(sum(sizes))}
    start = 0
    for file, n in zip(files, sizes):
        mine = fidx == names.index(file.rsplit("/", 1)[-1])
        out["split"][start + entry[mine]] = split[mine]
        out[column][start + entry[mine]] = value[mine]
        start += n
    return out


def events(sample: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    """The events of ``sample`` where ``keep``, with the per-jet arrays that ``table`` reads."""
    out = {k: v[keep] for k, v in sample.items() if not k.startswith("_")}
    jets = keep[sample["_jet_event"]]
    out["_jet_m"] = sample["_jet_m"][jets]
    out["_jet_event"] = (np.cumsum(keep) - 1)[sample["_jet_event"][jets]]
    return out


def in_sample(path: str, args, train_a, train_b) -> None:
    sizes_a, sizes_b = entries(args.train_primary), entries(args.train_secondary)
    split_b = split_of(path, 1, args.train_secondary, sizes_b, "nn_weight")["split"]
    with h5py.File(path, "r") as f:
        columns = [c for c in ("nn_weight", "baseline_weight") if c in f]
    print("training files | weights | total | njets | nleps | jet_m")
    for label, test in (("train split", lambda s: s == 0), ("validation + test", lambda s: s > 0)):
        for column in columns:
            a = split_of(path, 0, args.train_primary, sizes_a, column)
            keep_a, keep_b = test(a["split"]), test(split_b)
            w = a[column][keep_a]
            result = table(events(train_a, keep_a), events(train_b, keep_b), w * len(w) / w.sum(), args.bins)
            figures = [result["total"], result["njets"], result["objects"]["nleps"], result["objects"]["jet_m"]]
            print(f"{label} | {column} | " + " | ".join(f"{f['chi2_ndf']:.2f}" for f in figures))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--primary", nargs="+", required=True)
    p.add_argument("--secondary", nargs="+", required=True)
    p.add_argument("--train-primary", nargs="+", required=True)
    p.add_argument("--train-secondary", nargs="+", required=True)
    p.add_argument("--predictions", help="predictions.h5 of the trained model applied to --primary/--secondary")
    p.add_argument("--training-predictions", help="predictions.h5 of the training job (its own files, by split)")
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
    if args.training_predictions:
        in_sample(args.training_predictions, args, train_a, train_b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
