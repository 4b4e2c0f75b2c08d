"""Seed 003's graph network: objects are nodes, edges come from each node's mother index.

Node features (PDG id through an embedding) -> Dense layers per node -> GCN layers on the
normalised, symmetrised adjacency with self loops -> masked global average pooling -> Dense -> sigmoid.
"""

from __future__ import annotations

import keras

from payload.config import GCNModel, JobConfig
from payload.learn.models.blocks import features, mlp, probability
from payload.learn.models.layers import Columns, GraphConv, MaskedPool, MotherAdjacency


def build_gcn(
    config: JobConfig, cfg: GCNModel, max_objects: int, object_names: list[str], event_names: list[str]
) -> keras.Model:
    objects = keras.Input((max_objects, len(object_names)), name="objects")
    mask = keras.Input((max_objects,), name="mask")
    inputs = {"objects": objects, "mask": mask}
    mother = Columns([object_names.index(cfg.graph.mother)], squeeze=True, name="mother")(objects)
    graph = MotherAdjacency(name="adjacency")([mother, mask])
    h = mlp(
        features(objects, object_names, cfg, "nodes", skip=(cfg.graph.mother,)),
        cfg.phi_widths,
        cfg,
        "node",
        dropout=0.0,
        mask=mask,
    )
    for i, width in enumerate(cfg.graph.gcn_widths):
        h = GraphConv(width, cfg.activation, name=f"gcn{i}")([h, graph])
    h = MaskedPool("mean", name="pool")([h, mask])
    if event_names:
        events = keras.Input((len(event_names),), name="events")
        inputs["events"] = events
        h = keras.layers.Concatenate(name="with_events")([h, features(events, event_names, cfg, "events")])
    h = mlp(h, cfg.f_widths, cfg, "F")
    return keras.Model(inputs, probability(h, config.training, inputs), name="gcn")
