"""PNG plots of a job's results (matplotlib, headless)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from payload.results.closure import named_tables
from payload.results.evaluate import Evaluation
from payload.results.metrics import WeightedHist


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc(evaluation: Evaluation, path: Path) -> Path:
    fpr, tpr = evaluation.scores.roc()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(fpr, tpr, label=f"AUC = {evaluation.scores.auc():.4f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split, weighted)")
    ax.legend(loc="lower right")
    return _save(fig, path)


def history(history_csv: Path, path: Path) -> Path | None:
    if not history_csv.exists():
        return None
    with history_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [int(r["epoch"]) + 1 for r in rows]
    for key in ("loss", "val_loss"):
        if key in rows[0]:
            ax.plot(epochs, [float(r[key]) for r in rows], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="weighted binary cross-entropy", title="learning curves")
    ax.legend()
    return _save(fig, path)


def calibration(evaluation: Evaluation, path: Path) -> Path:
    cal = evaluation.metrics["calibration"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(cal["score"], cal["fraction"], marker="o", label="classifier")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", label="perfectly calibrated")
    ax.set(xlabel="mean score in bin", ylabel="weighted fraction of label 1", title="calibration (test split)")
    ax.legend()
    return _save(fig, path)


def weights(hists: dict[str, tuple[WeightedHist, float]], path: Path) -> Path:
    """The weight distribution after normalisation, per weighting ({name: (histogram of the factors
    before normalisation, normalisation)})."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (hist, factor) in hists.items():
        ax.stairs(hist.sumw, hist.edges * factor, label=LABELS.get(name, name), **STYLE.get(name, {}))  # type: ignore[arg-type]
    ax.set(
        xscale="log", xlabel="weight (normalised)", ylabel="weighted events", title="per-event weights (primary, test)"
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


#: How each weighting is drawn and named in closure plots.
LABELS = {"unweighted": "primary", "nn": "primary x NN", "baseline": "primary x GBReweighter", "secondary": "secondary"}
STYLE = {
    "unweighted": {"color": "tab:blue"},
    "nn": {"color": "tab:red"},
    "baseline": {"color": "tab:green", "ls": "--"},
    "secondary": {"color": "black"},
}


def _closure_plot(
    name: str, hists: dict[str, WeightedHist], comparisons: dict[str, dict], path: Path, kind: str
) -> Path:
    """Normalised distributions (secondary as points with errors), and below, each weighting over the
    secondary with the secondary's statistical uncertainty as a grey band and the weighting's own as
    error bars; chi2/ndf and p per weighting in the legend."""
    import mplhep

    edges = hists["secondary"].edges
    widths = np.diff(edges)
    density, errors = {}, {}
    for key, h in hists.items():
        total = max(h.sumw.sum(), 1e-300)
        density[key] = h.sumw / total / widths
        errors[key] = np.sqrt(np.maximum(h.sumw2, 0)) / total / widths
    with plt.style.context(
        [
            mplhep.style.ROOT,
            {
                "font.size": 11,
                "axes.labelsize": 13,
                "xtick.labelsize": 11,
                "ytick.labelsize": 11,
                "legend.fontsize": 9,
                "xtick.minor.visible": False,
                "ytick.minor.visible": False,
            },
        ]
    ):
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
        for key in ("unweighted", "nn", "baseline"):
            if key in density:
                c = comparisons.get(key, {})
                label = LABELS[key] + (f"  chi2/ndf {c['chi2_ndf']:.2f}, p {c['p']:.2g}" if c else "")
                mplhep.histplot(density[key], edges, ax=top, label=label, **STYLE[key])
        mplhep.histplot(
            density["secondary"],
            edges,
            yerr=errors["secondary"],
            ax=top,
            histtype="errorbar",
            label=LABELS["secondary"],
            color="black",
            markersize=4,
        )
        top.set_ylabel("normalised density")
        top.set_title(f"{name} ({kind}, test events)", fontsize=12)
        top.legend(fontsize=9)
        with np.errstate(divide="ignore", invalid="ignore"):
            ref = density["secondary"]
            band = np.where(ref > 0, errors["secondary"] / ref, np.nan)
            bottom.stairs(1 + band, edges, baseline=1 - band, fill=True, color="0.85", label="secondary stat.")
            spread = [np.nanmax(np.abs(band))]
            centres = 0.5 * (edges[1:] + edges[:-1])
            for key in ("unweighted", "nn", "baseline"):
                if key in density:
                    ratio = np.where(ref > 0, density[key] / ref, np.nan)
                    bottom.stairs(ratio, edges, **STYLE[key])
                    if key == "nn":
                        bottom.errorbar(
                            centres,
                            ratio,
                            yerr=np.where(ref > 0, errors[key] / ref, np.nan),
                            fmt="none",
                            color=STYLE[key]["color"],
                            lw=1,
                        )
                    spread.append(np.nanmax(np.abs(ratio - 1)))
        reach = float(np.clip(1.2 * np.nanmax(spread), 0.02, 0.5)) if np.isfinite(np.nanmax(spread)) else 0.2
        bottom.axhline(1, color="grey", ls=":")
        bottom.set(ylim=(1 - reach, 1 + reach), xlabel=name, ylabel="/ secondary")
        if len(edges) > 3 and kind == "event level":  # equal-population bins: the last one reaches the maximum
            bottom.set_xlim(edges[0], min(edges[-1], edges[-2] + 2 * (edges[-2] - edges[-3])))
        return _save(fig, path)


def closure(evaluation: Evaluation, directory: Path) -> list[Path]:
    """One closure plot per event-level variable and per object-level variable, and a summary of
    chi2/ndf per variable and weighting."""
    closure_metrics = evaluation.metrics["closure"]
    paths = []
    for name, hists in evaluation.event_hists.items():
        paths.append(
            _closure_plot(
                name,
                hists,
                closure_metrics["event_level"].get(name, {}),
                directory / f"closure_{_safe(name)}.png",
                "event level",
            )
        )
    for v in evaluation.variables:
        if "secondary" in v.hists:
            paths.append(
                _closure_plot(
                    v.name,
                    v.hists,
                    closure_metrics["object_level"].get(v.name, {}),
                    directory / f"closure_objects_{_safe(v.name)}.png",
                    "all objects",
                )
            )
    paths.append(closure_summary(closure_metrics, directory / "closure_summary.png"))
    return paths


def closure_summary(closure_metrics: dict, path: Path) -> Path:
    """chi2/ndf of every variable per weighting, with where p = 0.01 lies: what to look at first."""
    from scipy.stats import chi2 as chi2_dist

    rows = list(named_tables(closure_metrics["event_level"], closure_metrics["object_level"]).items())
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.5))
    y = np.arange(len(rows))
    for offset, key in zip((-0.2, 0.0, 0.2), ("unweighted", "nn", "baseline")):
        values = [c.get(key, {}).get("chi2_ndf", np.nan) for _, c in rows]
        if np.isfinite(values).any():
            ax.scatter(values, y + offset, s=14, label=LABELS[key], color=STYLE[key]["color"])
    ndf = [next(iter(c.values()))["ndf"] for _, c in rows]
    ax.scatter([chi2_dist.isf(0.01, n) / n for n in ndf], y, marker="|", s=120, color="grey", label="p = 0.01")
    ax.set_yticks(y, [n for n, _ in rows], fontsize=7)
    ax.set_xscale("log")
    ax.invert_yaxis()
    ax.set(xlabel="chi2 / ndf against the secondary (test events)", title="closure per variable")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def bar(labels: list[str], values: list[float], metric: str, path: Path) -> Path:
    """One bar per job, in the given (ranked) order."""
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * len(labels) + 2), 4))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set(ylabel=metric, title=f"jobs ranked by {metric}")
    if values:
        low, high = min(values), max(values)
        pad = 0.1 * (high - low) or 0.05 * abs(high) or 1.0
        ax.set_ylim(low - pad, high + pad)
    return _save(fig, path)


def residuals(hists: dict[str, WeightedHist], summary: dict[str, dict[str, float]], path: Path) -> Path:
    """Seed 004's response plots: relative residual (out - in) / in per variable, with mean and sigma."""
    n = len(hists)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, (name, hist) in zip(axes.flat, hists.items()):
        s = summary[name]
        ax.stairs(hist.sumw, hist.edges)
        ax.set(xlabel=f"({name} out - in) / in", title=f"mean {s['mean']:.2g}, sigma {s['sigma']:.2g}")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    return _save(fig, path)


def correlation(matrix: np.ndarray, names: list[str], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax)
    ax.set_title("correlation of relative residuals")
    return _save(fig, path)
