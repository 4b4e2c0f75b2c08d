"""How much the A-B difference itself varies between samples of the same two configurations.

A reweighter learns the difference its training files hold, fluctuations included; scored on held-out
files it is judged against theirs.  For each ``--pair LABEL A_FILES B_FILES`` (comma-separated files)
this prints the unweighted chi2/ndf of A against B per variable of ``holdout_closure.py`` (whose reading,
binning and chi2 it reuses, sharing nothing with the package), in the same bins for every pair (from
the B files of ``--edges-from``, default the first pair), its excess over 1 scaled to one sample size
(a true difference makes it grow in proportion to the events), and then, for every pair after the first,
whether its files are the same distributions as the first pair's: a 5-fold cross-validated
gradient-boosted classifier (scikit-learn ``HistGradientBoostingClassifier``) on the 16 variables of
``--baseline-features more`` separating the first pair's A from this pair's A, and B from B, with the
standard deviation of the AUC of a classifier that cannot separate them (Mann-Whitney, no fit).

    python benchmarks/sample_shift.py --pair reference ttbar_A_large.root ttbar_B_large.root \
        --pair fourth A1.root,A3.root,A5.root,A7.root B2.root,B4.root,B6.root,B8.root --edges-from fourth
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
from holdout_closure import MORE, VARIABLES, chi2, edges_for, matrix, read  # benchmarks/ on sys.path

SHOWN = [*VARIABLES, "nleps"]


def shift(a, b, edges: dict[str, np.ndarray]) -> dict[str, float]:
    """Unweighted chi2/ndf of ``a`` against ``b`` per variable, in ``edges``."""
    out = {}
    for name in SHOWN:
        c, n = chi2(a[name], a["weight"], b[name], b["weight"], edges[name])
        out[name] = c / n
    return out


def effective_events(sample) -> float:
    """Kish's effective number of events, (sum w)^2 / sum w^2: the event count for unit weights."""
    w = sample["weight"]
    return float(w.sum() ** 2 / (w * w).sum())


def per_100k(row: dict[str, float], a, b) -> dict[str, float]:
    """The excess of chi2/ndf over 1 scaled to 100k + 100k events: a true difference makes it grow with
    the effective sample size 1 / (1/n_a + 1/n_b), so samples of other sizes compare on this scale."""
    na, nb = effective_events(a), effective_events(b)
    scale = 5e4 * (na + nb) / (na * nb)
    return {name: (value - 1) * scale for name, value in row.items()}


def same_distribution_auc(x: dict, y: dict, seed: int = 0) -> tuple[float, float]:
    """Out-of-fold AUC of a classifier separating ``x`` from ``y`` on the 16 variables, and the
    AUC's standard deviation for two samples of these sizes drawn from one distribution.  Both count
    events, so samples whose generator weights differ are refused rather than compared unweighted."""
    for sample in (x, y):
        if np.ptp(sample["weight"]) > 0:
            raise SystemExit(
                "the same-distribution check counts events, and these files carry unequal generator weights: "
                "rerun with --no-classifier"
            )
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    features = VARIABLES + MORE
    data = np.concatenate([matrix(s, features) for s in (x, y)])
    labels = np.concatenate([np.zeros(len(x["weight"])), np.ones(len(y["weight"]))])
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    score = cross_val_predict(
        HistGradientBoostingClassifier(random_state=seed), data, labels, cv=folds, method="predict_proba"
    )[:, 1]
    n1, n2 = len(x["weight"]), len(y["weight"])
    return float(roc_auc_score(labels, score)), math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pair", nargs=3, action="append", required=True, metavar=("LABEL", "A_FILES", "B_FILES"))
    p.add_argument("--edges-from", help="label of the pair whose B files set the bins (default: the first)")
    p.add_argument("--bins", type=int, default=10)
    p.add_argument("--no-classifier", action="store_true", help="skip the same-distribution check")
    p.add_argument("--json")
    args = p.parse_args(argv)

    samples = {label: (read(a.split(",")), read(b.split(","))) for label, a, b in args.pair}
    reference = args.edges_from or args.pair[0][0]
    if reference not in samples:
        raise SystemExit(f"--edges-from {reference}: no --pair has that label (labels: {', '.join(samples)})")
    edges = {name: edges_for(name, samples[reference][1][name], args.bins) for name in SHOWN}
    rows = {label: shift(a, b, edges) for label, (a, b) in samples.items()}
    result: dict[str, dict] = {
        "bins_from": reference,
        "shift": rows,
        "excess_per_100k": {label: per_100k(rows[label], a, b) for label, (a, b) in samples.items()},
        "same_distribution": {},
    }
    for key, title in (
        ("shift", f"unweighted chi2/ndf of A against B, {args.bins} bins of {reference}'s B"),
        ("excess_per_100k", "its excess over 1 scaled to 100k + 100k events"),
    ):
        print(title)
        print("| pair | events A + B | " + " | ".join(SHOWN) + " |")
        print("|" + "---|" * (len(SHOWN) + 2))
        for label, (a, b) in samples.items():
            size = f"{len(a['weight'])} + {len(b['weight'])}"
            print(f"| {label} | {size} | " + " | ".join(f"{result[key][label][v]:.2f}" for v in SHOWN) + " |")
    if not args.no_classifier:
        first, (a0, b0) = next(iter(samples.items()))
        for label, (a, b) in list(samples.items())[1:]:
            for config, x, y in (("A", a0, a), ("B", b0, b)):
                auc, sd = same_distribution_auc(x, y)
                result["same_distribution"][f"{first} {config} vs {label} {config}"] = {"auc": auc, "null_sd": sd}
                print(
                    f"{first} {config} vs {label} {config}: AUC {auc:.4f} "
                    f"({(auc - 0.5) / sd:+.1f} sd of one distribution's {sd:.4f})",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
