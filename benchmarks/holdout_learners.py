"""Is the baseline's held-out lead the variables it is given, or the learner?  Beside
``holdout_closure.py`` (whose reading, variables and table it reuses, sharing nothing with the package):
hep_ml's GBReweighter and a small dense classifier of this script's own, both trained on exactly the same
variables of the same training files (every event), each repeated over ``--seeds``, scored on the held-out
files.  The spread over seeds is what one training of either can be trusted to: compare methods by their
means, not by one run each.

The network: ``log1p`` of the momenta and masses, standardised; two hidden layers of 128 (GELU, dropout
0.5), one logit; binary cross-entropy of secondary against primary, Adam at 0.002 with a cosine decay over
30 epochs of batch 2048; weights exp(logit), normalised.  (Among relu/tanh/gelu, 16 to 128 wide,
dropout 0 to 0.5, 5 to 60 epochs, L2, weight averaging, a one-hot jet multiplicity and an additive
network, on the fourth held-out sample of docs/results.md, the best held-out total: none was ahead of the
GBReweighter's mean.)

    python benchmarks/holdout_learners.py --primary hold_A*.root --secondary hold_B*.root \
        --train-primary ttbar_A_large.root --train-secondary ttbar_B_large.root [--features more] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from holdout_closure import (
    HEAD,
    MORE,
    VARIABLES,
    gb_weights,
    markdown_row,
    normalised,
    read,
    table,
)  # benchmarks/ on sys.path

LOGARITHMIC = {"jet1_pt", "HT", "mjj", "ptV", "lep1_pt", "met", "jet2_pt", "jet1_m", "jet2_m", "lep2_pt"}


def columns(sample, features: list[str]) -> np.ndarray:
    return np.column_stack([np.log1p(sample[f]) if f in LOGARITHMIC else sample[f] for f in features]).astype(
        np.float32
    )


def nn_weights(a, b, primary, seed: int, features: list[str]) -> np.ndarray:
    """Weights of the ``primary`` events from a dense classifier trained on ``a`` (0) against ``b`` (1)."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    x = np.concatenate([columns(a, features), columns(b, features)])
    y = np.concatenate([np.zeros(len(a["weight"])), np.ones(len(b["weight"]))]).astype(np.float32)
    w = np.concatenate([a["weight"], b["weight"]]).astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((x.shape[1],))
    h = inputs
    for width in (128, 128):
        h = keras.layers.Dropout(0.5)(keras.layers.Dense(width, activation="gelu")(h))
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    epochs, batch = 30, 2048
    schedule = keras.optimizers.schedules.CosineDecay(0.002, epochs * -(-len(x) // batch))
    model.compile(keras.optimizers.Adam(schedule), keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit((x - mean) / std, y, sample_weight=w, batch_size=batch, epochs=epochs, shuffle=True, verbose=0)
    logit = model.predict((columns(primary, features) - mean) / std, batch_size=65536, verbose=0)[:, 0]
    return normalised(np.exp(logit.astype(np.float64)), primary)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--primary", nargs="+", required=True, help="held-out primary file(s)")
    p.add_argument("--secondary", nargs="+", required=True, help="held-out secondary file(s)")
    p.add_argument("--train-primary", nargs="+", required=True)
    p.add_argument("--train-secondary", nargs="+", required=True)
    p.add_argument("--features", choices=["eight", "more"], default="eight")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--bins", type=int, default=20)
    p.add_argument("--json")
    args = p.parse_args(argv)

    features = VARIABLES + (MORE if args.features == "more" else [])
    primary, secondary = read(args.primary), read(args.secondary)
    train_a, train_b = read(args.train_primary), read(args.train_secondary)
    rows: dict[str, dict] = {}
    totals: dict[str, list[float]] = {}
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "---|" * len(HEAD))
    for method, weights in (("GBReweighter", gb_weights), ("network", nn_weights)):
        for seed in args.seeds:
            label = f"{method}, seed {seed}"
            r = rows[label] = table(primary, secondary, weights(train_a, train_b, primary, seed, features), args.bins)
            totals.setdefault(method, []).append(r["total"]["chi2_ndf"])
            print(markdown_row(label, r), flush=True)
    for method, values in totals.items():
        spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
        print(
            f"{method} on {args.features}: total chi2/ndf {np.mean(values):.3f} +- {spread:.3f} over seeds {args.seeds}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"features": features, "rows": rows, "totals": totals}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
