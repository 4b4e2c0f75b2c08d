"""Held-out closure of a reweighting, measured by code that shares nothing with the package.

Reads the held-out ROOT files directly with uproot, builds eight event-level variables (jet
multiplicity, leading-jet pT, HT, mjj, ptV, dRjj, leading-lepton pT, MET), and compares reweighted
primary with secondary in 20 equal-population bins of the secondary (integer bins for the jet
multiplicity): chi2 = sum (a_i - b_i)^2 / (var a_i + var b_i) of the normalised histograms,
ndf = bins - 1 per variable, and its p-value.  Rows:

- unweighted;
- every ``--predictions`` file given (``payload run --mode evaluate`` of a trained model on the
  held-out files): its ``nn_weight`` joined to the ROOT entries by (file, entry);
- with ``--train-primary/--train-secondary``: hep_ml's GBReweighter trained on the same eight
  variables of those files (the field's standard reweighter, the baseline); with
  ``--baseline-features more`` on eight more besides (lepton multiplicity, second jet's pT, the two
  leading jets' masses and pseudorapidities, the leading lepton's pseudorapidity, the second lepton's
  pT), about as much as the network's high-level inputs tell it;
- with ``--marginals TRAINING_PREDICTIONS`` (the same model applied to the training files with
  ``--mode evaluate``, which writes every event's weight), each ``--predictions`` row again with its
  marginal on the baseline's variables replaced by the baseline's: its weights divided by their mean
  given those variables (a gradient-boosted regression on the training primary's events) and multiplied
  by the GBReweighter's.  What is left of the network is what those variables do not show.

    python benchmarks/holdout_closure.py --primary hold_A*.root --secondary hold_B*.root \
        --predictions applied/predictions.h5 --train-primary ttbar_A_large.root --train-secondary ttbar_B_large.root

Also prints, per object type, the multiplicity and the object-level jet-mass closure (all jets),
which the baseline cannot see.  ``--json OUT`` writes every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import awkward as ak
import h5py
import numpy as np
import uproot
from scipy import stats

VARIABLES = ["njets", "jet1_pt", "HT", "mjj", "ptV", "dRjj", "lep1_pt", "met"]
MORE = ["nleps", "jet2_pt", "jet1_m", "jet2_m", "jet1_eta", "jet2_eta", "lep1_eta", "lep2_pt"]
BRANCHES = ["jet_pt", "jet_eta", "jet_m", "lep_pt", "lep_eta", "met", "mjj", "ptV", "dRjj", "weight"]


def read(paths: list[str], tree: str = "nominal") -> dict[str, np.ndarray]:
    """The variables of every event of ``paths`` (concatenated in the order given)."""
    parts = []
    for path in paths:
        with uproot.open(path) as f:
            parts.append(f[tree].arrays(BRANCHES))
    a = ak.concatenate(parts)
    jets, leps = a["jet_pt"], a["lep_pt"]
    out = {
        "njets": ak.to_numpy(ak.num(jets)).astype(np.float64),
        "jet1_pt": ak.to_numpy(ak.fill_none(ak.firsts(jets), 0.0)).astype(np.float64),
        "HT": ak.to_numpy(ak.sum(jets, axis=1)).astype(np.float64),
        "mjj": ak.to_numpy(a["mjj"]).astype(np.float64),
        "ptV": ak.to_numpy(a["ptV"]).astype(np.float64),
        "dRjj": ak.to_numpy(a["dRjj"]).astype(np.float64),
        "lep1_pt": ak.to_numpy(ak.fill_none(ak.max(leps, axis=1), 0.0)).astype(np.float64),
        "met": ak.to_numpy(a["met"]).astype(np.float64),
        "nleps": ak.to_numpy(ak.num(leps)).astype(np.float64),
        "weight": ak.to_numpy(a["weight"]).astype(np.float64),
    }

    def nth(values, n: int) -> np.ndarray:
        return ak.to_numpy(ak.fill_none(ak.pad_none(values, n + 1)[:, n], 0.0)).astype(np.float64)

    by_pt = ak.argsort(leps, axis=1, ascending=False)
    out.update(
        jet2_pt=nth(jets, 1),
        jet1_m=nth(a["jet_m"], 0),
        jet2_m=nth(a["jet_m"], 1),
        jet1_eta=nth(a["jet_eta"], 0),
        jet2_eta=nth(a["jet_eta"], 1),
        lep1_eta=nth(a["lep_eta"][by_pt], 0),
        lep2_pt=nth(leps[by_pt], 1),
    )
    out["_jet_m"] = ak.to_numpy(ak.flatten(a["jet_m"])).astype(np.float64)
    out["_jet_event"] = np.repeat(np.arange(len(jets)), ak.to_numpy(ak.num(jets)))
    return out


def edges_for(name: str, b: np.ndarray, bins: int) -> np.ndarray:
    if name in ("njets", "nleps"):
        lo, hi = int(b.min()), int(b.max())
        edges = np.arange(lo, hi + 2) - 0.5
        # Merge sparse high-multiplicity bins so every bin holds >= 0.5 % of the events.
        counts = np.histogram(b, edges)[0]
        keep = [edges[0]]
        acc = 0
        for c, e in zip(counts, edges[1:]):
            acc += c
            if acc >= 0.005 * len(b):
                keep.append(e)
                acc = 0
        keep[-1] = edges[-1]
        return np.unique(np.asarray(keep))
    e = np.unique(np.quantile(b, np.linspace(0, 1, bins + 1)))
    e[0], e[-1] = -np.inf, np.inf
    return e


def chi2(a, wa, b, wb, edges) -> tuple[float, int]:
    ha, _ = np.histogram(a, edges, weights=wa)
    va, _ = np.histogram(a, edges, weights=wa * wa)
    hb, _ = np.histogram(b, edges, weights=wb)
    vb, _ = np.histogram(b, edges, weights=wb * wb)
    na, nb = ha.sum(), hb.sum()
    var = va / na**2 + vb / nb**2
    ok = var > 0
    return float(((ha / na - hb / nb)[ok] ** 2 / var[ok]).sum()), int(ok.sum()) - 1


def table(primary, secondary, weights: np.ndarray, bins: int) -> dict[str, dict[str, float]]:
    out = {}
    total, ndf = 0.0, 0
    for name in VARIABLES:
        edges = edges_for(name, secondary[name], bins)
        c, n = chi2(primary[name], primary["weight"] * weights, secondary[name], secondary["weight"], edges)
        out[name] = {"chi2": c, "ndf": n, "chi2_ndf": c / n, "p": float(stats.chi2.sf(c, n))}
        total, ndf = total + c, ndf + n
    out["total"] = {"chi2": total, "ndf": ndf, "chi2_ndf": total / ndf, "p": float(stats.chi2.sf(total, ndf))}
    # Object-level figures the eight event-level variables do not show.
    extra = {}
    for name in ("nleps",):
        edges = edges_for(name, secondary[name], bins)
        c, n = chi2(primary[name], primary["weight"] * weights, secondary[name], secondary["weight"], edges)
        extra[name] = {"chi2_ndf": c / n, "p": float(stats.chi2.sf(c, n))}
    edges = edges_for("jet_m", secondary["_jet_m"], bins)
    wa = (primary["weight"] * weights)[primary["_jet_event"]]
    wb = secondary["weight"][secondary["_jet_event"]]
    c, n = chi2(primary["_jet_m"], wa, secondary["_jet_m"], wb, edges)
    extra["jet_m"] = {"chi2_ndf": c / n, "p": float(stats.chi2.sf(c, n))}
    out["objects"] = extra
    return out


def nn_weights(path: str, primary_files: list[str], sizes: list[int]) -> np.ndarray:
    """``nn_weight`` of the primary's events, file by file and entry by entry, in the order ``read``
    concatenates them (1 for entries the job did not keep)."""
    with h5py.File(path, "r") as f:
        sources = json.loads(f.attrs["source_files"])
        sample, fidx, entry, w = f["sample"][:], f["file_index"][:], f["entry"][:], f["nn_weight"][:]
    names = [s.rsplit("/", 1)[-1] for s in sources["0"]]
    out = []
    for file, n in zip(primary_files, sizes):
        index = names.index(file.rsplit("/", 1)[-1])
        sel = (sample == 0) & (fidx == index)
        part = np.ones(n)
        part[entry[sel]] = w[sel]
        out.append(part)
    return np.concatenate(out)


def entries(paths: list[str], tree: str = "nominal") -> list[int]:
    sizes = []
    for path in paths:
        with uproot.open(path) as f:
            sizes.append(f[tree].num_entries)
    return sizes


def matrix(sample, features: list[str]) -> np.ndarray:
    """The ``read`` variables ``features`` of every event, one column each."""
    return np.column_stack([sample[v] for v in features])


def gb_weights(a, b, primary, seed: int, features: list[str]) -> np.ndarray:
    """GBReweighter weights of the ``primary`` events, trained on the ``read`` variables of ``a`` -> ``b``."""
    from hep_ml.reweight import GBReweighter

    xa, xb = matrix(a, features), matrix(b, features)
    np.random.seed(seed)  # noqa: NPY002 - hep_ml's GBReweighter draws its subsamples from the global RNG
    gb = GBReweighter(
        n_estimators=50, learning_rate=0.1, max_depth=3, min_samples_leaf=1000, gb_args={"subsample": 0.4}
    )
    gb.fit(xa, xb, original_weight=a["weight"], target_weight=b["weight"])
    w = gb.predict_weights(matrix(primary, features), primary["weight"])
    return normalised(w / primary["weight"], primary)


def conditional_mean(weights: np.ndarray, train, primary, features: list[str]) -> np.ndarray:
    """E[weight | features] at the ``primary`` events, regressed on the ``train`` events' ``weights``."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    regression = HistGradientBoostingRegressor(
        max_iter=500, early_stopping=True, validation_fraction=0.2, n_iter_no_change=20, random_state=0
    ).fit(matrix(train, features), weights, sample_weight=train["weight"])
    mean = regression.predict(matrix(primary, features))
    # A boosted sum of leaf values can undershoot a mean of positive weights; dividing by such a value would
    # blow the event up, and flooring it would score weights that are not the ones described.
    if (low := np.count_nonzero(mean < 0.05)) > 0:
        raise SystemExit(f"--marginals: the regressed mean weight is below 0.05 at {low} events: not scored")
    return mean


def same_model(predictions: str, other: str) -> None:
    """Refuses two ``payload run`` outputs whose ``model.keras`` (each evaluate job keeps a copy beside its
    ``predictions.h5``) differ or cannot be compared: one model's weights divided by another's mean would
    score a reweighting nobody trained."""
    digests = []
    for path in (predictions, other):
        model = Path(path).parent / "model.keras"
        if not model.is_file():
            raise SystemExit(f"--marginals: no {model} beside {path} to tell which model wrote it")
        digests.append(hashlib.sha256(model.read_bytes()).hexdigest())
    if digests[0] != digests[1]:
        raise SystemExit(f"--marginals: {predictions} and {other} come from different models (model.keras differ)")


def normalised(weights: np.ndarray, primary) -> np.ndarray:
    """Per-event factors scaled so the reweighted primary keeps its sum of weights; refuses non-finite ones."""
    weights = weights * primary["weight"].sum() / (primary["weight"] * weights).sum()
    if not np.isfinite(weights).all():
        raise SystemExit(
            f"{np.count_nonzero(~np.isfinite(weights))} non-finite weights: that reweighting is not scored"
        )
    return weights


HEAD = ["", *VARIABLES, "total", "n_leptons", "jet m"]


def markdown_row(label: str, r: dict) -> str:
    cells = [f"{r[v]['chi2_ndf']:.2f}" for v in VARIABLES]
    cells.append(f"{r['total']['chi2_ndf']:.2f} (ndf {r['total']['ndf']})")
    cells += [f"{r['objects'][k]['chi2_ndf']:.2f}" for k in ("nleps", "jet_m")]
    return f"| {label} | " + " | ".join(cells) + " |"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--primary", nargs="+", required=True, help="held-out primary file(s)")
    p.add_argument("--secondary", nargs="+", required=True, help="held-out secondary file(s)")
    p.add_argument("--predictions", nargs="*", default=[], help="LABEL=predictions.h5 or predictions.h5")
    p.add_argument("--train-primary", nargs="+")
    p.add_argument("--train-secondary", nargs="+")
    p.add_argument("--baseline-features", choices=["eight", "more"], default="eight")
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--marginals", metavar="TRAINING_PREDICTIONS", help="the model's predictions.h5 on the training files"
    )
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.marginals and not (args.train_primary and args.train_secondary):
        p.error("--marginals needs --train-primary and --train-secondary (the baseline and its training files)")
    for spec in args.predictions if args.marginals else []:
        same_model(spec.rpartition("=")[2], args.marginals)

    primary, secondary = read(args.primary), read(args.secondary)
    n = len(primary["weight"])
    rows = {"unweighted": table(primary, secondary, np.ones(n), args.bins)}
    nn = {}
    for spec in args.predictions:
        label, _, path = spec.rpartition("=")
        nn[label or path] = nn_weights(path, args.primary, entries(args.primary))
        rows[label or path] = table(primary, secondary, nn[label or path], args.bins)
    if args.train_primary and args.train_secondary:
        features = VARIABLES + (MORE if args.baseline_features == "more" else [])
        train_a = read(args.train_primary)
        gb = gb_weights(train_a, read(args.train_secondary), primary, args.seed, features)
        rows["GBReweighter"] = table(primary, secondary, gb, args.bins)
        if args.marginals:
            on_train = nn_weights(args.marginals, args.train_primary, entries(args.train_primary))
            mean = conditional_mean(on_train, train_a, primary, features)
            for label, w in nn.items():
                rows[f"{label}, GBReweighter marginals"] = table(
                    primary, secondary, normalised(w * gb / mean, primary), args.bins
                )
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for label, r in rows.items():
        print(markdown_row(label, r))
    worst = {label: min((r[v]["p"], v) for v in VARIABLES) for label, r in rows.items()}
    for label, (pv, v) in worst.items():
        print(f"{label}: smallest p-value {pv:.3g} ({v})", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
