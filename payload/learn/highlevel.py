"""High-level event features built from a converted event file, for checks that share nothing with the
network: the independent closure test, the GBReweighter baseline and the event-level closure tables.

Per collection (objects of one ``type`` code, or all objects when there is no type feature): the
multiplicity ``n_<c>``, the leading two objects' features ``<c>1_<f>``, ``<c>2_<f>`` (every object
feature but the type, azimuthal angles and categorical codes; 0 where the object is absent) and the
scalar sum of the ordering feature ``sum_<o>_<c>`` (HT for jets, MET for a one-object collection);
where the objects carry ``pt``, ``eta``, ``phi`` and ``m``, also the invariant mass ``<c>12_m`` and
separation ``<c>12_dr`` of the leading two (what a per-object feature list cannot show: their
relative angle); then the total multiplicity and sum, the spectators and the event features.
Leading means first in the stored order, which is descending ``data.sort_by``.
"""

from __future__ import annotations

import numpy as np

from payload.config import TYPE_FEATURE, JobConfig, embedded
from payload.ingest.h5layout import object_mask

LEADING = 2


class HighLevel:
    def __init__(self, config: JobConfig, object_names: list[str], event_names: list[str], spectator_names: list[str]):
        self.object_names = object_names
        order = config.data.sort_by or ("pt" if "pt" in object_names else None)
        self.order = object_names.index(order) if order in object_names else None
        skip = set(config.scaling.passthrough) | {TYPE_FEATURE} | embedded(config)
        self.features = [(j, n) for j, n in enumerate(object_names) if n not in skip and "phi" not in n.lower()]
        self.type_index = object_names.index(TYPE_FEATURE) if TYPE_FEATURE in object_names else None
        collections = config.data.collections
        self.groups = (
            [(c.name, c.type_code) for c in collections]
            if self.type_index is not None and len(collections) > 1
            else [("objects", None)]
        )
        four = ("pt", "eta", "phi", "m")
        self.kinematics = [object_names.index(n) for n in four] if all(n in object_names for n in four) else None
        names, integer, derived = [], [], {}
        for group, _ in self.groups:
            names.append(f"n_{group}")
            integer.append(names[-1])
            for k in range(LEADING):
                for _, n in self.features:
                    names.append(f"{group}{k + 1}_{n}")
                    derived[names[-1]] = n
            if self.order is not None:
                names.append(f"sum_{object_names[self.order]}_{group}")
                derived[names[-1]] = object_names[self.order]
            if self.kinematics is not None:
                names += [f"{group}12_m", f"{group}12_dr"]
                derived[f"{group}12_m"] = "m"
        if len(self.groups) > 1:
            names.append("n_objects")
            integer.append("n_objects")
            if self.order is not None:
                names.append(f"sum_{object_names[self.order]}")
                derived[names[-1]] = object_names[self.order]
        #: The columns built from the objects, then the spectators and event features as they are.
        self.object_names_ = names
        self.names = names + list(spectator_names) + list(event_names)
        #: Multiplicities: binned per integer in closure tables.
        self.integer = set(integer)
        #: The object feature each built column is made of (leading pT and sums of pT: "pt"), for transforms.
        self.derived = derived

    def object_columns(self, objects: np.ndarray, n_objects: np.ndarray) -> np.ndarray:
        """(events, len(object_names_)) float32 from raw (unscaled) padded objects."""
        # Only the slots some event fills: the rest is padding (6 of 45 real on the reference events).
        objects = objects[:, : max(1, min(objects.shape[1], int(n_objects.max()) if len(n_objects) else 0))]
        n, m = len(n_objects), objects.shape[1]
        real = object_mask(n_objects, m)
        out = np.empty((n, len(self.object_names_)), dtype=np.float32)
        rows = np.arange(n)
        i = 0

        def put(column):
            nonlocal i
            out[:, i] = column
            i += 1

        types = None if self.type_index is None else np.rint(objects[:, :, self.type_index])
        for _, code in self.groups:
            sel = real if code is None else real & (types == code)
            count = sel.sum(axis=1)
            put(count)
            rank = np.cumsum(sel, axis=1, dtype=np.int32)
            leading = []
            for k in range(LEADING):
                # The (k+1)-th selected slot; where there is none, slot 0 (its values are not used).
                present = count > k
                picked = objects[rows, (sel & (rank == k + 1)).argmax(axis=1)]
                leading.append((picked, present))
                for j, _ in self.features:
                    put(np.where(present, picked[:, j], 0.0))
            if self.order is not None:
                put(np.where(sel, objects[:, :, self.order], 0.0).sum(axis=1))
            if self.kinematics is not None:
                (first, _), (second, both) = leading[:2]
                for column in _pair(first, second, both, self.kinematics):
                    put(column)
        if len(self.groups) > 1:
            put(real.sum(axis=1))
            if self.order is not None:
                put(np.where(real, objects[:, :, self.order], 0.0).sum(axis=1))
        return out

    def compute(self, block) -> np.ndarray:
        """(events, len(names)) float32 for a ``payload.learn.dataset.Block`` (its raw, unscaled arrays)."""
        return np.concatenate(
            [
                self.object_columns(block.raw_objects, block.n_objects),
                block.spectators.astype(np.float32),
                block.events.astype(np.float32),
            ],
            axis=1,
        )


def _pair(a: np.ndarray, b: np.ndarray, both: np.ndarray, kinematics: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Invariant mass and Delta R of two objects per event, ``a`` and ``b`` (events, features), where
    ``both`` (0 elsewhere)."""
    pt_i, eta_i, phi_i, m_i = kinematics
    p = []
    for o in (a, b):
        pt, eta, phi, m = (o[:, i].astype(np.float64) for i in (pt_i, eta_i, phi_i, m_i))
        px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
        p.append((np.sqrt(px * px + py * py + pz * pz + m * m), px, py, pz))
    e, px, py, pz = (x + y for x, y in zip(*p))
    mass = np.sqrt(np.maximum(e * e - px * px - py * py - pz * pz, 0.0))
    dphi = (a[:, phi_i] - b[:, phi_i] + np.pi) % (2 * np.pi) - np.pi
    dr = np.hypot(a[:, eta_i] - b[:, eta_i], dphi)
    return np.where(both, mass, 0.0), np.where(both, dr, 0.0)
