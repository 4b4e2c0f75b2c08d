"""Toy ttbar-like events with the reference ntuples' branch names, for the demo, tests and benchmarks.

Two generator-like configurations: B has a slightly harder, busier radiation pattern than A, the way
a different shower or generator would, so a classifier has something to learn and a reweighting
something to fix.  Kinematics are toys; the branch layout (tree ``nominal``, GeV, jagged jets and
leptons with a counter per collection, flat MET and spectators) is the real one.
"""

from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import uproot

CONFIGS = {
    "A": {"extra_jets": 2.6, "jet_pt_scale": 48.0, "met_scale": 38.0, "seed": 1},
    "B": {"extra_jets": 2.9, "jet_pt_scale": 54.0, "met_scale": 41.0, "seed": 2},
}


def _jagged(counts: np.ndarray, flat: np.ndarray) -> ak.Array:
    return ak.unflatten(flat.astype(np.float32), counts)


def _p4(pt, eta, phi, m):
    px, py = pt * np.cos(phi), pt * np.sin(phi)
    pz = pt * np.sinh(eta)
    e = np.sqrt(px**2 + py**2 + pz**2 + m**2)
    return px, py, pz, e


def generate(n: int, extra_jets: float, jet_pt_scale: float, met_scale: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    njets = 2 + rng.poisson(extra_jets, n)
    nj = int(njets.sum())
    jet_pt = 25.0 + rng.exponential(jet_pt_scale, nj)
    # Sort jets by pT within each event, as ntuples are.
    event = np.repeat(np.arange(n), njets)
    order = np.lexsort((-jet_pt, event))
    jet_pt = jet_pt[order]
    jet_eta = np.clip(rng.normal(0.0, 1.2, nj), -2.49, 2.49)
    jet_phi = rng.uniform(-np.pi, np.pi, nj)
    jet_m = jet_pt * 0.12 * rng.lognormal(0.0, 0.3, nj)
    jet_truthb = (rng.random(nj) < 0.3).astype(np.int32)

    nleps = rng.choice([0, 1, 2], size=n, p=[0.35, 0.55, 0.10])
    nl = int(nleps.sum())
    lep_pt = 25.0 + rng.exponential(35.0, nl)
    lep_order = np.lexsort((-lep_pt, np.repeat(np.arange(n), nleps)))
    lep_pt = lep_pt[lep_order]
    lep_eta = np.clip(rng.normal(0.0, 1.1, nl), -2.49, 2.49)
    lep_phi = rng.uniform(-np.pi, np.pi, nl)
    lep_m = np.where(rng.random(nl) < 0.5, 0.000511, 0.1057)
    lep_charge = rng.choice([-1, 1], size=nl).astype(np.int32)
    met = 5.0 + rng.exponential(met_scale, n)
    met_phi = rng.uniform(-np.pi, np.pi, n)

    # Spectators from the objects: mjj and dRjj of the two leading jets, ptV of lepton + MET.
    first = np.concatenate([[0], np.cumsum(njets)[:-1]])
    j1, j2 = first, first + 1
    p1 = _p4(jet_pt[j1], jet_eta[j1], jet_phi[j1], jet_m[j1])
    p2 = _p4(jet_pt[j2], jet_eta[j2], jet_phi[j2], jet_m[j2])
    s = [a + b for a, b in zip(p1, p2)]
    mjj = np.sqrt(np.maximum(s[3] ** 2 - s[0] ** 2 - s[1] ** 2 - s[2] ** 2, 0.0))
    dphi = np.mod(jet_phi[j1] - jet_phi[j2] + np.pi, 2 * np.pi) - np.pi
    dRjj = np.hypot(jet_eta[j1] - jet_eta[j2], dphi)
    lead = np.concatenate([[0], np.cumsum(nleps)[:-1]])
    has_lep = nleps > 0
    lx = np.zeros(n)
    ly = np.zeros(n)
    lx[has_lep] = lep_pt[lead[has_lep]] * np.cos(lep_phi[lead[has_lep]])
    ly[has_lep] = lep_pt[lead[has_lep]] * np.sin(lep_phi[lead[has_lep]])
    ptV = np.hypot(lx + met * np.cos(met_phi), ly + met * np.sin(met_phi))

    return {
        "jet_pt": _jagged(njets, jet_pt),
        "jet_eta": _jagged(njets, jet_eta),
        "jet_phi": _jagged(njets, jet_phi),
        "jet_m": _jagged(njets, jet_m),
        "jet_truthb": ak.unflatten(jet_truthb, njets),
        "lep_pt": _jagged(nleps, lep_pt),
        "lep_eta": _jagged(nleps, lep_eta),
        "lep_phi": _jagged(nleps, lep_phi),
        "lep_m": _jagged(nleps, lep_m),
        "lep_charge": ak.unflatten(lep_charge, nleps),
        "met": met.astype(np.float32),
        "met_phi": met_phi.astype(np.float32),
        "njets": njets.astype(np.int32),
        "nleps": nleps.astype(np.int32),
        "weight": np.ones(n, dtype=np.float32),
        "mjj": mjj.astype(np.float32),
        "ptV": ptV.astype(np.float32),
        "dRjj": dRjj.astype(np.float32),
    }


def _split(branches: dict) -> dict:
    # Jagged branches share one counter per collection, as in real ntuples.
    jets = ak.zip({k[4:]: branches[k] for k in branches if k.startswith("jet_")})
    leps = ak.zip({k[4:]: branches[k] for k in branches if k.startswith("lep_")})
    flat = {k: v for k, v in branches.items() if not k.startswith(("jet_", "lep_"))}
    return {"jet": jets, "lep": leps, **flat}


def write_sample(
    path: str | Path, events: int, name: str = "A", batch: int = 50_000, extra_jets: float | None = None
) -> Path:
    """Write ``events`` toy events of configuration ``name`` ("A" or "B"), in bounded batches;
    ``extra_jets``: the mean number of jets beyond two, instead of the configuration's."""
    cfg = dict(CONFIGS[name])
    seed = cfg.pop("seed")
    if extra_jets is not None:
        cfg["extra_jets"] = extra_jets
    with uproot.recreate(path) as f:
        for i, start in enumerate(range(0, events, batch)):
            parts = _split(generate(min(batch, events - start), **cfg, seed=int(seed) * 100_003 + i))
            if i == 0:
                types = {k: (v.type.content if isinstance(v, ak.Array) else v.dtype) for k, v in parts.items()}
                f.mktree("nominal", types, counter_name=lambda coll: f"n_{coll}")
            f["nominal"].extend(parts)
    return Path(path)


# Decay trees for the graph workflow (seed 003): B0 -> {D0, pi, gamma, pi0}, D0 -> K pi (+pi0) or pi pi,
# pi0 -> gamma gamma.  The skim "passes" mostly events with a D0 -> K- pi+ decay, which also sit at a
# higher beam-constrained mass: a spectator that a filter would bias.
_B_DAUGHTERS = [421, 211, -211, 22, 111]
_D_DECAYS = [[-321, 211], [-321, 211, 111], [211, -211]]


def _decay(rng, energy: float, n: int) -> np.ndarray:
    """Four-momenta (px, py, pz, E) of ``n`` massless-ish daughters sharing ``energy``."""
    shares = rng.dirichlet(np.ones(n)) * energy
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return np.column_stack([direction * shares[:, None], shares])


def graph_events(n: int, seed: int = 0) -> tuple[dict, np.ndarray]:
    """Per-particle jagged branches (part_px/py/pz/e, part_pdg, part_mother: index of the mother in
    the event, -1 for none) plus the spectator ``mbc``; and whether each event passes the skim."""
    rng = np.random.default_rng(seed)
    rows: list[list[tuple[float, float, float, float, int, int]]] = []
    passes = np.zeros(n, dtype=bool)
    for i in range(n):
        parts = [(0.0, 0.0, 0.0, 5.28, 511, -1)]
        k_pi = False
        daughters = rng.choice(_B_DAUGHTERS, size=int(rng.integers(2, 5)))
        for pdg, p4 in zip(daughters, _decay(rng, 5.28, len(daughters))):
            parts.append((*p4, int(pdg), 0))
            mother = len(parts) - 1
            if pdg == 421:
                decay = _D_DECAYS[int(rng.integers(len(_D_DECAYS)))]
                k_pi |= decay == [-321, 211]
                products = [(*q, d, mother) for d, q in zip(decay, _decay(rng, p4[3], len(decay)))]
            elif pdg == 111:
                products = [(*q, 22, mother) for q in _decay(rng, p4[3], 2)]
            else:
                products = []
            parts.extend(products)
        passes[i] = rng.random() < (0.85 if k_pi else 0.1)
        rows.append(parts)
    counts = np.array([len(r) for r in rows])
    flat = np.array([p for r in rows for p in r], dtype=np.float64)
    branches = {f"part_{name}": _jagged(counts, flat[:, j]) for j, name in enumerate(("px", "py", "pz", "e"))}
    branches["part_pdg"] = ak.unflatten(flat[:, 4].astype(np.int32), counts)
    branches["part_mother"] = ak.unflatten(flat[:, 5].astype(np.int32), counts)
    branches["mbc"] = np.where(passes, rng.normal(5.275, 0.01, n), rng.normal(5.24, 0.03, n)).astype(np.float32)
    return branches, passes


def write_graph_samples(directory: str | Path, events: int, seed: int = 0) -> tuple[Path, Path]:
    """``graph_pass.root`` and ``graph_fail.root`` (tree ``events``): the skim's two classes in their own files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    branches, passes = graph_events(events, seed)
    paths = []
    for name, keep in (("pass", passes), ("fail", ~passes)):
        path = directory / f"graph_{name}.root"
        parts = {k: v[keep] for k, v in branches.items()}
        particles = ak.zip({k[5:]: v for k, v in parts.items() if k.startswith("part_")})
        with uproot.recreate(path) as f:
            f.mktree(
                "events", {"part": particles.type.content, "mbc": np.float32}, counter_name=lambda coll: f"n_{coll}"
            )
            f["events"].extend({"part": particles, "mbc": parts["mbc"]})
        paths.append(path)
    return paths[0], paths[1]
