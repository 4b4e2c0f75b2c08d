"""The closure checks that share nothing with the network: they must see a wrong reweighting and pass
a right one.  Real events: the reference ttbar sample A, converted as a job does."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from conftest import REPO

from payload.config import parse_config
from payload.ingest.convert import convert
from payload.learn.dataset import EventSource
from payload.learn.highlevel import HighLevel
from payload.learn.splits import uniform
from payload.results.closure import (
    ClosureSample,
    against_baseline,
    edges_for,
    event_level,
    independent_test,
    null_sigma,
    verdict,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def events(tmp_path_factory, shared_samples):
    """High-level features and weights of every event of ttbar_A (40 000), from its converted file."""
    config = parse_config(yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text()))
    h5 = convert(config, [str(shared_samples[0])], tmp_path_factory.mktemp("closure") / "a.h5", progress=False).output
    source = EventSource(h5, config, None)
    high = HighLevel(config, source.object_names, source.event_names, source.spectator_names)
    blocks = list(source.iterate(splits=None, drop_outliers=False))
    features = np.concatenate([high.compute(b) for b in blocks])
    u = np.concatenate([uniform(b.entry, source.file_keys[b.file_index], 99) for b in blocks])
    source.close()
    return high, features, u


def _toy(events, tilt: float = 0.0):
    """Primary: one half of sample A.  Secondary: the other half, whose events carry weights exp(a z)
    with z the standardised leading-jet pT, so its density is the primary's times exp(a z) / norm:
    that is the true density ratio.  ``tilt`` multiplies the primary's weights by a further
    (1 + tilt z): a mis-weighting of leading-jet pT by a few percent."""
    high, x, u = events
    z_all = x[:, high.names.index("jets1_pt")]
    z_all = (z_all - np.median(z_all)) / np.subtract(*np.percentile(z_all, [75, 25]))
    a = 0.08
    half = u < 0.5
    x0, x1, z0, z1 = x[half], x[~half], z_all[half], z_all[~half]
    secondary_w = np.exp(a * np.clip(z1, -3, 3))
    true_ratio = np.exp(a * np.clip(z0, -3, 3))
    mis = true_ratio * np.clip(1 + tilt * z0, 0.5, 2.0)
    sample = ClosureSample(high.names, high.integer)
    sample.add(0, x0, np.ones(len(x0)), {"nn": mis * len(x0) / mis.sum()})
    sample.add(1, x1, secondary_w)
    return sample


def test_independent_test_passes_the_true_density_ratio_and_sees_the_unweighted_difference(events):
    result = independent_test(_toy(events), folds=5, permutations=2, seed=3)
    assert not result["results"]["nn"]["significant"], result["results"]
    assert result["results"]["nn"]["p"] > 0.01
    assert result["results"]["unweighted"]["significant"], result["results"]
    # The permutation null sits at 0.5 within the analytic spread.
    null = result["permutation_null"]
    assert abs(null["mean"] - 0.5) < 3 * result["results"]["nn"]["null_sigma"]


def test_independent_test_flags_a_few_percent_tilt_in_leading_jet_pt(events):
    result = independent_test(_toy(events, tilt=0.06), folds=5, permutations=0, seed=3)
    nn = result["results"]["nn"]
    assert nn["significant"] and nn["p"] < 0.01, nn
    tables = event_level(_toy(events, tilt=0.06), bins=20)
    lines = verdict(tables, result, "nn", None)
    assert any("independent classifier still separates" in line for line in lines)
    assert tables["variables"]["jets1_pt"]["nn"]["p"] < 0.01


def test_event_level_tables_close_for_the_true_ratio(events):
    tables = event_level(_toy(events), bins=20)
    total = tables["total"]["nn"]
    assert 0.7 < total["chi2_ndf"] < 1.3 and total["p"] > 0.01, total
    # Multiplicities are binned per value; constant and duplicated columns are left out.
    steps = np.diff(tables["hists"]["n_jets"]["secondary"].edges)
    assert np.allclose(steps[:-1], 1.0) and steps[-1] >= 1  # sparse high multiplicities share the last bin
    assert "sum_pt_met" not in tables["variables"]  # the same numbers as met1_pt
    assert "met2_pt" not in tables["variables"]  # never filled: one MET object per event


def test_null_sigma_is_the_mann_whitney_spread():
    n0, n1 = 3000, 5000
    expected = np.sqrt((n0 + n1 + 1) / (12 * n0 * n1))
    assert null_sigma(np.ones(n0), np.ones(n1)) == pytest.approx(expected, rel=1e-3)
    # Weights shrink the effective sample size: one event of weight 1000 dominates its class.
    w = np.ones(n0)
    w[0] = 1000
    assert null_sigma(w, np.ones(n1)) > 2 * expected


def test_integer_bins_merge_sparse_values():
    values = np.concatenate([np.full(500, 2), np.full(400, 3), np.full(95, 4), np.full(3, 9), np.full(2, 11)])
    edges = edges_for(values.astype(float), 20, integer=True)
    assert edges[0] == 1.5 and edges[-1] == 11.5
    counts = np.histogram(values, edges)[0]
    assert (counts >= 5).all() and counts.sum() == len(values)
    assert edges_for(np.ones(10), 20, integer=False) is None


def test_leading_pair_mass_and_separation_match_the_generators_mjj_and_drjj(events, tmp_path, shared_samples):
    """jets12_m and jets12_dr, built from the converted jets, equal the generator's own mjj and dRjj
    spectators (computed by FastJet from the same two jets) for every event."""
    high, x, _ = events
    with __import__("uproot").open(shared_samples[0]) as f:
        truth = f["nominal"].arrays(["mjj", "dRjj"], library="np")
    np.testing.assert_allclose(x[:, high.names.index("jets12_m")], truth["mjj"], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(x[:, high.names.index("jets12_dr")], truth["dRjj"], atol=1e-4)


def test_network_and_baseline_are_level_within_the_statistics_and_only_worse_beyond_them_is_a_warning():
    def tables(nn, baseline, ndf=306):
        return {"total": {"nn": {"chi2_ndf": nn, "ndf": ndf}, "baseline": {"chi2_ndf": baseline, "ndf": ndf}}}

    # 2 sqrt(2) sqrt(2/306) = 0.23: a job's own 20k test events cannot tell 1.12 from 1.13 (or from 1.30).
    assert against_baseline(tables(1.12, 1.13)["total"]) == "level"
    assert against_baseline(tables(1.30, 1.13)["total"]) == "level"
    assert against_baseline(tables(1.40, 1.13)["total"]) == "worse"
    assert against_baseline(tables(1.00, 1.40)["total"]) == "better"
    # With more bins the same difference is beyond the statistics.
    assert against_baseline(tables(1.30, 1.13, ndf=3000)["total"]) == "worse"
    assert against_baseline({"nn": {"chi2_ndf": 1.0, "ndf": 100}}) is None
    assert against_baseline(tables(1.0, 1.0)["total"], baseline=None) is None
    warned = [m for m in verdict(tables(1.40, 1.13), {}) if m.startswith("the standard reweighter")]
    assert warned == [
        "the standard reweighter (baseline) closes better than the network: total chi2/ndf 1.13 against 1.40 over 306 bins"
    ]
    assert not [m for m in verdict(tables(1.30, 1.13), {}) if m.startswith("the standard reweighter")]


def test_an_object_feature_that_did_not_close_is_named_in_the_verdict():
    """The event-level variables close, the jets' mass over all jets does not: the verdict must say so."""
    closed = {"unweighted": {"chi2": 90.0, "p": 1e-10}, "nn": {"chi2": 20.0, "p": 0.4}}
    tables = {"variables": {"mjj": closed}, "total": {}}
    assert verdict(tables, {}, objects={"jets_pt": closed}) == []
    mass = {"unweighted": {"chi2": 900.0, "p": 1e-90}, "nn": {"chi2": 400.0, "p": 1e-40}}
    assert verdict(tables, {}, objects={"jets_pt": closed, "jets_m": mass}) == [
        "1 variable(s) not closed after reweighting (chi2 p < 0.01): jets_m (objects)"
    ]
    mass["nn"]["chi2"] = 1000.0
    assert verdict(tables, {}, objects={"jets_m": mass})[0].endswith("not closed (chi2 p < 0.01): jets_m (objects)")


def test_a_job_whose_object_level_closure_fails_says_so_though_its_event_level_closes(events):
    """The job's closure step (``payload.results.evaluate``) with event-level tables that close (the
    toy's true ratio) and an object feature whose NN-weighted histogram is tilted: the verdict must not
    be closed, and must name the object feature."""
    from payload.results import evaluate
    from payload.results.metrics import BinaryScores, WeightedHist

    config = parse_config(
        yaml.safe_load((REPO / "examples" / "seed000_reweight.yaml").read_text())
        | {"evaluation": {"independent_test": False, "baseline": "none"}}
    )
    rng = np.random.default_rng(7)
    variable = evaluate.Variable("jets_m", 3, 1, np.linspace(0, 1, 21))
    for key, tilt in (("secondary", 0.0), ("unweighted", 0.3), ("nn", 0.1)):
        values = rng.random(50_000)
        variable.hists[key] = WeightedHist(variable.edges)
        variable.hists[key].fill(values, 1 + tilt * (values - 0.5))
    evaluation = evaluate.Evaluation({}, BinaryScores(), [variable])
    weighting = evaluate._Weighting(20)
    weighting.sum_w = weighting.sum_wf = 1.0
    evaluate._closure(config, evaluation, _toy(events), {"nn": weighting}, None)
    verdict_ = evaluation.metrics["closure"]["verdict"]
    assert not verdict_["closed"]
    assert verdict_["messages"] == ["1 variable(s) not closed after reweighting (chi2 p < 0.01): jets_m (objects)"]
