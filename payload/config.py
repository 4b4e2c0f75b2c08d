"""The typed job config: one validated model drives every stage and is dumped into every output.

A config is a YAML file; every key has a default except the object collections.  Unknown keys are
errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from payload.errors import ConfigError

#: Object feature filled from the collection's ``type_code`` rather than read from a branch.
TYPE_FEATURE = "type"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _names_to_mapping(value: Any) -> Any:
    """Accept ``[a, b]`` as shorthand for ``{a: a, b: b}`` (feature named as its branch)."""
    if isinstance(value, (list, tuple)):
        return {str(v): str(v) for v in value}
    return value


class Collection(_Strict):
    """One kind of object (jets, leptons, ...) stacked into the padded object array.

    ``branches`` maps each object feature to a branch name, or to a number used for every object
    (e.g. ``eta: 0`` for a MET object).  Jagged branches give a variable number of objects per
    event (NANOAOD ``Jet_pt[nJet]`` reads as jagged too); flat branches give exactly one.
    """

    #: Name of the collection (used in closure variables and plots).
    name: str = Field(min_length=1)
    #: Value of the `type` object feature for these objects.
    type_code: int = 0
    #: Object feature -> branch name, or a number used for every object.
    branches: dict[str, str | float]


class DataConfig(_Strict):
    """Where the events are and how they become (events, objects, features) arrays."""

    #: TTree or RNTuple name in every input file.
    tree: str = "nominal"
    #: The object collections stacked into the padded object array.
    collections: list[Collection] = Field(min_length=1)
    #: Features of every object, in this order (`type` is the collection's `type_code`).
    object_features: list[str] = Field(default_factory=lambda: ["pt", "eta", "phi", "m", TYPE_FEATURE], min_length=1)
    #: Object slots per event; objects beyond it (the lowest in `sort_by`) are clipped and counted.
    max_objects: Annotated[int, Field(ge=1, le=10_000)] = 45
    #: Objects of all collections are sorted by this feature, descending (null keeps collection order).
    sort_by: str | None = "pt"
    #: Event-level network inputs: name -> branch (a list names them after their branches).
    event_features: dict[str, str] = Field(default_factory=dict)
    #: Variables carried through untouched for plots, closure and decorrelation: name -> branch.
    spectators: dict[str, str] = Field(default_factory=dict)
    #: Event weight branch (null: every event weighs 1).
    weight: str | None = None
    #: Events kept: a boolean expression of branches (`njets >= 2 and met > 20`); rejected ones get
    #: weight 1 and `selected = false` in the friend trees.
    selection: str | None = None
    #: Unit of the inputs' energies; stored in GeV.
    energy_unit: Literal["GeV", "MeV"] = "GeV"
    #: Features converted by `energy_unit` (and checked for negative values).
    energy_features: list[str] = Field(default_factory=lambda: ["pt", "m", "e", "met"])
    #: Entries read per conversion task.
    chunk_size: Annotated[int, Field(ge=100)] = 50_000
    #: Reading processes; 0 = one per core the job may use, less one (1 on two cores).
    workers: Annotated[int, Field(ge=0, le=512)] = 0
    #: HDF5 compression of the work files.
    compression: Literal["blosc-lz4", "lzf", "gzip", "none"] = "blosc-lz4"
    #: NaN or infinite values in a stored branch: ``error`` stops the job (exit 7) naming the branch
    #: and the count; ``drop_event`` leaves out every event holding one; ``zero`` stores 0 instead.
    #: The choice and the counts per branch are recorded in the work file and the manifest.
    nonfinite: Literal["error", "drop_event", "zero"] = "error"

    _to_mapping = field_validator("event_features", "spectators", mode="before")(_names_to_mapping)

    @field_validator("selection")
    @classmethod
    def _check_selection(cls, value: str | None) -> str | None:
        if value is not None:
            from payload.ingest.selection import compile_selection

            try:
                compile_selection(value)
            except ConfigError as err:
                raise ValueError(err.message) from None
        return value

    @model_validator(mode="after")
    def _check_features(self) -> DataConfig:
        features = self.object_features
        if len(set(features)) != len(features):
            raise ValueError(f"object_features has duplicates: {features}")
        names = [c.name for c in self.collections]
        if len(set(names)) != len(names):
            raise ValueError(f"collection names must be unique: {names}")
        wanted = [f for f in features if f != TYPE_FEATURE]
        for coll in self.collections:
            missing = [f for f in wanted if f not in coll.branches]
            extra = [f for f in coll.branches if f not in wanted]
            if missing:
                raise ValueError(f"collection {coll.name!r} has no branch for feature(s) {missing}")
            if extra:
                raise ValueError(f"collection {coll.name!r} maps feature(s) {extra} not in object_features {features}")
        if self.sort_by is not None and self.sort_by not in features:
            raise ValueError(f"sort_by {self.sort_by!r} is not one of object_features {features}")
        clash = set(self.event_features) & set(self.spectators)
        if clash:
            raise ValueError(f"names used both as event feature and spectator: {sorted(clash)}")
        return self

    def energy_scale(self, name: str) -> float:
        """Factor that brings feature ``name`` to GeV (stored arrays are always in GeV)."""
        return 1e-3 if self.energy_unit == "MeV" and name in self.energy_features else 1.0


class SplitConfig(_Strict):
    """Deterministic train/validation/test split: a hash of (input file, entry, seed) per event,
    so the same event lands in the same split in every job, chunking and evaluation."""

    #: Fraction of events in the training split (the test split is what train and validation leave).
    train: Annotated[float, Field(gt=0, lt=1)] = 0.5
    #: Fraction of events in the validation split.
    validation: Annotated[float, Field(ge=0, lt=1)] = 0.1
    #: Seed of the split hash: a different seed, a different split of the same events.
    seed: int = 12345
    #: k-fold: the test split is fold ``fold`` of ``folds`` (0 = off); validation is then a fraction of
    #: the other folds and ``train`` is unused.  One job per fold covers every event once as test.
    folds: int = 0
    #: The fold used as test split (0 ... folds - 1).
    fold: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check_sum(self) -> SplitConfig:
        if self.folds:
            if self.folds < 2:
                raise ValueError("folds must be 0 (off) or at least 2")
            if self.fold >= self.folds:
                raise ValueError(f"fold must be below folds ({self.folds}): folds are numbered 0..{self.folds - 1}")
        elif self.train + self.validation >= 1:
            raise ValueError("train + validation must leave a test fraction (sum < 1)")
        return self

    @property
    def test(self) -> float:
        return 1.0 / self.folds if self.folds else 1.0 - self.train - self.validation


class ScalingConfig(_Strict):
    """How network inputs are scaled; fitted on the training split of both samples together.

    ``fixed`` gives (offset, divisor) per feature, applied after the transform and not fitted: seed
    004's jet mass normalisation m -> (log10(m [GeV]) + 1) / 1.8 is ``transforms: {m: log10}``,
    ``fixed: {m: [-1, 1.8]}``.  Features ``fixed`` leaves out are left as they are.
    """

    #: `minmax` to [0, 1] between the `range_quantiles`, `standard` (mean 0, std 1), `fixed` (see `fixed`), `none`.
    method: Literal["minmax", "standard", "fixed", "none"] = "minmax"
    #: ``log``/``log10`` of x > 0 (values below the fitted floor, the lower range quantile of the
    #: positive values, are raised to it); zeros and negatives (MET = 0) map to a fitted value a tenth
    #: of the positive values' range below them, so they stay apart without squeezing the real values.
    transforms: dict[str, Literal["log", "log10", "log1p", "none"]] = Field(default_factory=dict)
    #: minmax maps these quantiles of the training split's real values (after the transform) to 0 and
    #: 1, so a few extreme values cannot squeeze the rest; [0, 1] is the exact min and max (seed 000).
    range_quantiles: tuple[Annotated[float, Field(ge=0, lt=0.5)], Annotated[float, Field(gt=0.5, le=1)]] = (
        0.001,
        0.999,
    )
    #: Feature -> (offset, divisor), applied after the transform and not fitted (method `fixed`).
    fixed: dict[str, tuple[float, Annotated[float, Field(gt=0)]]] = Field(default_factory=dict)
    #: Drop events with any real object whose feature exceeds this value (seed 000: pt > 3000 GeV).
    outliers: dict[str, float] = Field(default_factory=dict)
    #: Object features passed through unscaled (categorical codes such as the object type).
    passthrough: list[str] = Field(default_factory=lambda: [TYPE_FEATURE])


Widths = list[Annotated[int, Field(ge=1)]]


class Embedding(_Strict):
    """A categorical feature fed through a learnt lookup table (entity embedding, seed 002; PDG ids,
    seed 003) instead of as a number.  Values not listed share one extra row."""

    #: The category codes with a row of their own.
    values: list[int] = Field(min_length=1)
    #: Width of the learnt vector per category.
    dim: Annotated[int, Field(ge=1)] = 4


class AutoencoderConfig(_Strict):
    """Seeds 001 and 004: ``object`` compresses each object's features (4D jets), ``event`` the whole
    event (padded objects flattened, plus event features: the NANOAOD vector)."""

    #: `object`: each object's features; `event`: the whole event flattened.
    level: Literal["object", "event"] = "object"
    widths: Widths = Field(default_factory=lambda: [200, 100, 50])  # encoder; the decoder mirrors it
    #: Width of the bottleneck (the compressed representation).
    latent: Annotated[int, Field(ge=1)] = 3
    #: A variational autoencoder (seed 001): a Gaussian latent with a KL term.
    variational: bool = False
    #: Weight of the KL term in the loss (variational only).
    kl_weight: Annotated[float, Field(ge=0)] = 1e-3
    #: Reconstruction loss over real objects.
    loss: Literal["mse", "l1"] = "mse"


class GraphConfig(_Strict):
    """Seed 003: edges from each object's mother index (position of the mother in the same event,
    negative for none), symmetrised, with self loops, normalised D^-1/2 A D^-1/2."""

    #: Object feature holding the mother's index within the event (negative: none).
    mother: str = "mother"
    #: Widths of the graph convolution layers.
    gcn_widths: Widths = Field(default_factory=lambda: [128, 128, 128])


class Layers(_Strict):
    """What every model's hidden layers share."""

    #: `deepsets` (seed 000, the default), `dense` (seed 002), `gcn` (seed 003) or `autoencoder` (seeds
    #: 001, 004); the other settings of `model` depend on it.
    type: str
    #: Activation of the hidden layers (a Keras name).
    activation: str = "relu"
    #: Dropout rate after each hidden layer.
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    #: Batch normalisation after each hidden layer.
    batch_norm: bool = False


class ClassifierModel(Layers):
    """What the classifiers (`deepsets`, `dense`, `gcn`) share: the per-event network after pooling,
    their extra inputs and ensembles."""

    f_widths: Widths = Field(default_factory=lambda: [64, 64])  # per event, after pooling (or the dense network)
    #: Each hidden layer sees all earlier layers' outputs concatenated (seed 002's dense connections).
    dense_connections: bool = False
    #: Feed the high-level features built from the objects (multiplicity, leading objects, scalar pT
    #: sums per collection; ``payload.learn.highlevel``) to the network as event features, beside the set.
    high_level_inputs: bool = False
    #: Object features fed through a learnt embedding instead of as numbers.
    embeddings: dict[str, Embedding] = Field(default_factory=dict)
    #: Members trained in one job (different seeds) and averaged into one model (seed 002).
    ensemble: Annotated[int, Field(ge=1, le=100)] = 1
    #: ``folds``: member k also leaves part k of the training split out, and each training event is
    #: scored (weighted) only by the member that did not train on it; validation and test events by
    #: the average of all (cross-fitting: less variance in NN weights, no event judged in-sample).
    ensemble_split: Literal["seeds", "folds"] = "seeds"

    @model_validator(mode="after")
    def _check_folds(self) -> ClassifierModel:
        if self.ensemble_split == "folds" and self.ensemble < 2:
            raise ValueError("ensemble_split folds needs ensemble of at least 2 (the number of parts)")
        return self


class DeepSetsModel(ClassifierModel):
    """Seed 000: Phi on every object, masked pooling over the real ones, F on the pooled vector."""

    type: Literal["deepsets"] = "deepsets"
    phi_widths: Widths = Field(default_factory=lambda: [64, 64])  # per object (Deep Sets Phi)
    #: Pooling over the real objects (masked).
    pooling: Literal["sum", "mean"] = "sum"


class DenseModel(ClassifierModel):
    """Seed 002: a dense network on the event features, the flattened objects or the high-level
    features built from them (``model.high_level_inputs``), any of them together."""

    type: Literal["dense"]
    #: The padded object array, flattened, is an input beside the event features.
    flatten_objects: bool = False


class GCNModel(ClassifierModel):
    """Seed 003: a Dense layer per node, graph convolutions over mother-daughter edges, mean pooling."""

    type: Literal["gcn"]
    phi_widths: Widths = Field(default_factory=lambda: [64, 64])  # per node, before the graph convolutions
    graph: GraphConfig = Field(default_factory=GraphConfig)


class AutoencoderModel(Layers):
    """Seeds 001 and 004: an autoencoder (task `autoencode`)."""

    type: Literal["autoencoder"]
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)


def embedded(config: JobConfig) -> set[str]:
    """The features a classifier feeds through embeddings (none for the autoencoder)."""
    return set(config.model.embeddings) if isinstance(config.model, ClassifierModel) else set()


#: Fields of each model type, for the readable error of a setting another type takes.
MODEL_TYPES: dict[str, type[Layers]] = {
    "deepsets": DeepSetsModel,
    "dense": DenseModel,
    "gcn": GCNModel,
    "autoencoder": AutoencoderModel,
}


def _model_type(value: Any) -> str | None:
    """The ``model.type`` a section is, ``deepsets`` when it does not say."""
    if isinstance(value, dict):
        return value.get("type", "deepsets")
    return getattr(value, "type", None)


#: `model`: its settings depend on `model.type` (`deepsets`, the default; `dense`; `gcn`; `autoencoder`).
ModelConfig = Annotated[
    Annotated[DeepSetsModel, Tag("deepsets")]
    | Annotated[DenseModel, Tag("dense")]
    | Annotated[GCNModel, Tag("gcn")]
    | Annotated[AutoencoderModel, Tag("autoencoder")],
    Discriminator(_model_type),
]


class DecorrelationConfig(_Strict):
    """Loss + strength * dCorr^2(observable, output) per observable (seed 003's bias mitigation)."""

    features: list[str] = Field(min_length=1)  # spectators or event features
    #: Multiplies the dCorr^2 penalty.
    strength: Annotated[float, Field(ge=0)] = 1.0


class TrainingConfig(_Strict):
    #: Epochs to train (early stopping may end sooner).
    epochs: Annotated[int, Field(ge=1)] = 20
    #: Events per batch (over all devices when data parallel).
    batch_size: Annotated[int, Field(ge=1)] = 1024
    #: Adam's (peak) learning rate.
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    #: seed000: constant for 2 epochs then x exp(-0.1) per epoch (seed 000); cosine; onecycle; constant.
    schedule: Literal["seed000", "cosine", "onecycle", "constant"] = "seed000"
    early_stopping_patience: Annotated[int, Field(ge=0)] = 5  # 0 disables
    #: The model the job keeps: ``best`` (lowest validation loss) or ``last`` (the final epoch: with a
    #: schedule decaying to a small rate, the converged model, where a noisy validation loss would
    #: pick an early, still crude one).
    keep: Literal["best", "last"] = "best"
    #: Give both samples the same total weight in the loss.
    class_balance: bool = True
    #: Use the event weights in the loss.
    use_weights: bool = True
    #: Negative generator weights in the training loss: abs (default, stable), keep, or zero.
    negative_weights: Literal["abs", "keep", "zero"] = "abs"
    #: Events read per contiguous HDF5 block.
    block_size: Annotated[int, Field(ge=64)] = 8192
    #: Blocks mixed in the shuffle buffer.
    shuffle_blocks: Annotated[int, Field(ge=1)] = 4
    #: Validation events (both samples) scored after every epoch, for the loss that early stopping,
    #: `keep: best` and the learning curves use: beyond this, those of evenly spaced blocks, which
    #: are all a validation pass reads (at 4.4 M events per sample a pass read every block for
    #: 10 % of the events in it).  None: every validation event.
    validation_events: Annotated[int, Field(ge=1000)] | None = 250_000
    #: Scale the events' network inputs (and build the high-level ones) once, into
    #: `work/<sample>.inputs.h5` beside the event file, and read them back every epoch instead of
    #: recomputing them for every block (payload/learn/inputcache.py); costs one pass and disk about
    #: the event file's size.
    cache_inputs: bool = True
    #: Seed of initialisation and shuffling (an ensemble's members use seed, seed + 1, ...).
    seed: int = 1
    #: float16 compute: `auto` on a GPU, `on`, `off`.
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    #: Compile the training step with XLA: `auto` as Keras decides (on a GPU with TensorFlow, always
    #: with JAX, not on a CPU), `on`, `off`.  On a 2-core CPU it gained 1.03x on the seed-000 events
    #: and 1.10x on a wide-multiplicity toy (benchmarks/padding.py); one program per batch shape.
    jit_compile: Literal["auto", "on", "off"] = "auto"
    #: Deep Sets: training batches are cut to the largest real multiplicity they hold (rounded up to
    #: a multiple of 8), so padding is neither copied nor computed; masked pooling makes the result
    #: independent of it.  Evaluation scores every block's events in groups by the slots they need,
    #: for any model that takes a variable number of objects.
    trim_padding: bool = True
    #: With `trim_padding`: the rows of every 32 batches (both classes together) are grouped by the
    #: slots their multiplicity needs (8, 16, ...) before they are dealt into batches, so most batches
    #: need 8 slots where a random batch needs its rarest event's 16; the batches are then shuffled.
    #: It pays when one slot count holds most events (seed 000: 94 % need 8; 1.4x faster, same
    #: closure); off by default because where more events need the larger counts and the samples
    #: differ in multiplicity, batches of one count pull the network's output back and forth (the
    #: demo samples, 11-16 % beyond 8 slots, one epoch: test AUC 0.537 against 0.570 unbucketed).
    bucket_by_multiplicity: bool = False
    #: Replicate the model over several devices (payload/learn/distribute.py): auto = all GPUs when more than one.
    data_parallel: Literal["auto", "all", "off"] = "auto"
    #: Random symmetry transformations of the objects of every training batch (seed 002).
    augment: list[Literal["phi_rotation", "eta_flip", "x_flip", "y_flip"]] = Field(default_factory=list)
    #: Penalise correlation of the output with observables (seed 003).
    decorrelation: DecorrelationConfig | None = None


class SpeedupConfig(_Strict):
    """Seed 003's speed-up of filtered simulation, times relative to event generation."""

    simulation: Annotated[float, Field(gt=0)] = 1000.0  # simulation + reconstruction
    network: Annotated[float, Field(ge=0)] = 10.0  # the network's prediction
    retention: Annotated[float, Field(gt=0, lt=1)] = 0.05  # fraction of events the skim keeps


class EvaluationConfig(_Strict):
    #: NN weights p/(1-p) are clipped to [1/max, max] and normalised to the primary's sum of weights.
    max_weight: Annotated[float, Field(gt=1)] = 20.0
    #: Bins of the object-level closure histograms (all objects of a collection, axis from the data).
    bins: Annotated[int, Field(ge=5, le=1000)] = 40
    #: Equal-population bins of the event-level closure tables (p-values from chi2 with ndf = bins - 1).
    closure_bins: Annotated[int, Field(ge=2, le=1000)] = 20
    #: Test events per sample kept for the event-level tables, the independent test and its plots
    #: (a hash-drawn sample beyond this: memory stays bounded whatever the dataset size).
    closure_events: Annotated[int, Field(ge=100)] = 200_000
    #: Gradient-boosted classifier on high-level features, k-fold cross-validated, separating
    #: reweighted primary from secondary test events (shares nothing with the network).
    independent_test: bool = True
    #: Folds of the independent test's cross-validation.
    independent_folds: Annotated[int, Field(ge=2, le=20)] = 5
    #: Label permutations for the independent test's null distribution (0 = analytic null only).
    permutations: Annotated[int, Field(ge=0, le=100)] = 5
    #: The field's standard reweighter trained beside the network and compared with it (reweight only).
    baseline: Literal["gbreweighter", "none"] = "gbreweighter"
    baseline_events: Annotated[int, Field(ge=100)] = 200_000  # training events per sample
    #: Trees of the GBReweighter baseline.
    baseline_trees: Annotated[int, Field(ge=1, le=10_000)] = 50
    #: Train a fresh Deep Sets classifier on reweighted primary vs secondary (a second opinion: it
    #: shares the network's inputs and scaling, so it can share its blind spots).
    closure_classifier: bool = True
    #: Epochs of the closure classifier.
    closure_epochs: Annotated[int, Field(ge=1)] = 5
    #: Test-time augmentation: average over this many phi rotations (times the configured flips); 0 = off.
    test_time_augment: Annotated[int, Field(ge=0, le=64)] = 0
    #: AMS regularisation term b_r (seed 002; 10 in the HiggsML challenge), for ``classify``.
    ams_b_r: Annotated[float, Field(ge=0)] = 10.0
    #: Seed 003's speed-up of filtered simulation at the best threshold (classify).
    speedup: SpeedupConfig | None = None
    #: Autoencoders: relative residuals (out - in) / in are histogrammed in [-range, range].
    residual_range: Annotated[float, Field(gt=0)] = 0.5
    #: Write friends/<input>.friend.root: per input file, a tree with the input tree's entries in
    #: order (nn_weight, score, split and flags), for AddFriend, RDataFrame and uproot.
    friend_trees: bool = True


#: The config format's version, written into every dumped config.  A change that a config written
#: before could not be read under bumps it and adds ``MIGRATIONS[old]``, which turns a version-``old``
#: mapping into version ``old + 1``: bundles made today load after tomorrow's change.
CONFIG_VERSION = 3


def _from_v1(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1: the configs written before the format carried a version; their fields are today's."""
    return raw


#: Version 2's model settings and their defaults, which every output dumped whatever the type.
_V2_MODEL_DEFAULTS: dict[str, Any] = {
    "phi_widths": [64, 64],
    "f_widths": [64, 64],
    "activation": "relu",
    "dropout": 0.0,
    "pooling": "sum",
    "batch_norm": False,
    "dense_connections": False,
    "flatten_objects": False,
    "high_level_inputs": False,
    "embeddings": {},
    "ensemble": 1,
    "ensemble_split": "seeds",
    "autoencoder": {"level": "object", "widths": [200, 100, 50], "latent": 3, "variational": False}
    | {"kl_weight": 1e-3, "loss": "mse"},
    "graph": {"mother": "mother", "gcn_widths": [128, 128, 128]},
}


def _from_v2(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 2: one model section held every type's settings; version 3 holds only its type's
    (``MODEL_TYPES``).  Settings of other types left at their defaults (as every output dumped them)
    are dropped; any other value stays, for validation to name."""
    model = raw.get("model")
    kind = _model_type(model)
    if not isinstance(model, dict) or kind not in MODEL_TYPES:
        return raw
    fields = MODEL_TYPES[kind].model_fields
    kept = {k: v for k, v in model.items() if k in fields or _V2_MODEL_DEFAULTS.get(k, object()) != v}
    return {**raw, "model": kept}


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _from_v1, 2: _from_v2}


def migrate(raw: dict[str, Any], source: str = "<config>") -> dict[str, Any]:
    """``raw`` brought to ``CONFIG_VERSION`` (no ``version`` key: version 1)."""
    version = raw.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"config {source}: version {version!r} is not a config version (a whole number from 1)")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"config {source}: version {version} was written by a newer grid-payload (this one reads "
            f"up to {CONFIG_VERSION}); upgrade grid-payload to use it"
        )
    out = dict(raw)
    while version < CONFIG_VERSION:
        out = MIGRATIONS[version](out)
        version += 1
    out["version"] = CONFIG_VERSION
    return out


class JobConfig(_Strict):
    """The whole job: one config drives every stage and is dumped into every output."""

    #: The config format's version (configs without one are version 1 and are migrated on loading).
    version: Annotated[int, Field(ge=CONFIG_VERSION, le=CONFIG_VERSION)] = CONFIG_VERSION
    #: `reweight` (secondary / primary density ratio as weights), `classify` (primary = signal),
    #: `autoencode` (the primary alone).
    task: Literal["reweight", "classify", "autoencode"] = "reweight"
    #: The inputs: see `data` below.
    data: DataConfig
    split: SplitConfig = Field(default_factory=SplitConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    model: ModelConfig = Field(default_factory=DeepSetsModel)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @property
    def autoencoder(self) -> AutoencoderConfig:
        """The autoencoder settings of a task `autoencode` job (validation ties the task to the model type)."""
        if not isinstance(self.model, AutoencoderModel):
            raise TypeError(f"model.type {self.model.type} is not an autoencoder")
        return self.model.autoencoder

    @model_validator(mode="after")
    def _check_names(self) -> JobConfig:
        known = set(self.data.object_features) | set(self.data.event_features)
        for section, names in (
            ("scaling.transforms", self.scaling.transforms),
            ("scaling.outliers", self.scaling.outliers),
        ):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{section} names unknown feature(s) {unknown}; features are {sorted(known)}")
        model, objects, events = self.model, self.data.object_features, self.data.event_features
        if isinstance(model, DenseModel) and not (events or model.flatten_objects or model.high_level_inputs):
            raise ValueError(
                "model.type dense needs data.event_features, model.flatten_objects or model.high_level_inputs"
            )
        if (self.task == "autoencode") != isinstance(model, AutoencoderModel):
            raise ValueError("task autoencode and model.type autoencoder go together")
        if self.scaling.method == "fixed":
            unknown = sorted(set(self.scaling.fixed) - known)
            if unknown:
                raise ValueError(f"scaling.fixed names unknown feature(s) {unknown}; features are {sorted(known)}")
        categorical = list(model.embeddings) if isinstance(model, ClassifierModel) else []
        unknown = sorted(set(categorical) - known)
        if unknown:
            raise ValueError(f"model.embeddings names unknown feature(s) {unknown}; features are {sorted(known)}")
        if isinstance(model, GCNModel):
            if model.graph.mother not in objects:
                raise ValueError(f"model.graph.mother {model.graph.mother!r} is not one of object_features {objects}")
            if self.data.sort_by is not None:
                raise ValueError("model.type gcn needs data.sort_by: null (mother indices refer to the stored order)")
            categorical.append(model.graph.mother)
        missing = [n for n in categorical if n not in self.scaling.passthrough]
        if missing:  # categorical codes and indices are never scaled
            self.scaling.passthrough = [*self.scaling.passthrough, *missing]
        if self.training.augment or self.evaluation.test_time_augment:
            if isinstance(model, DenseModel) and not model.flatten_objects:
                raise ValueError("augmentation transforms objects: the dense model needs model.flatten_objects")
            need = {"phi"} | ({"eta"} if "eta_flip" in self.training.augment else set())
            bad = sorted(n for n in need if n not in objects or self.scaling.transforms.get(n, "none") != "none")
            if bad:
                raise ValueError(f"augmentation needs object feature(s) {bad} without a transform")
        if self.training.decorrelation:
            observables = set(self.data.spectators) | set(events)
            unknown = sorted(set(self.training.decorrelation.features) - observables)
            if unknown:
                raise ValueError(f"training.decorrelation.features {unknown} are not spectators or event features")
            if self.task != "classify":
                raise ValueError("training.decorrelation is for task classify")
        return self


def _format_validation_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc, msg = list(e["loc"]), e["msg"].removeprefix("Value error, ")
        if loc[:1] == ["model"] and len(loc) > 1 and loc[1] in MODEL_TYPES:
            kind = str(loc.pop(1))  # the union's tag: the model type whose settings were read
            if e["type"] == "extra_forbidden":
                msg = f"not a setting of model.type {kind} (its settings: {', '.join(MODEL_TYPES[kind].model_fields)})"
        where = ".".join(str(p) for p in loc) or "<top level>"
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_config(raw: Any, source: str = "<config>") -> JobConfig:
    """Validate a config given as a mapping; raise ``ConfigError`` with one readable line."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config {source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return JobConfig.model_validate(migrate(raw, source))
    except ValidationError as err:
        raise ConfigError(f"config {source}: {_format_validation_error(err)}") from None


#: Bounds on a config file, which may come from an untrusted bundle: its size, the number of values
#: once YAML aliases are expanded (a 1 kB "billion laughs" file expands to gigabytes) and the nesting.
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_VALUES = 100_000
MAX_CONFIG_DEPTH = 64


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_yaml_size(root: yaml.Node, source: str) -> None:
    """Count the values and depth of the document as it would be built (aliases expanded), without
    building it; refuse recursive aliases."""
    measured: dict[int, tuple[int, int]] = {}
    open_nodes: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in measured:
            continue
        children = _children(node)
        if not children_done:
            if key in open_nodes:
                raise ConfigError(f"config {source}: a YAML alias refers to itself; configs must be finite")
            open_nodes.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in open_nodes:
                    raise ConfigError(f"config {source}: a YAML alias refers to itself; configs must be finite")
                stack.append((child, False))
            continue
        open_nodes.discard(key)
        size = 1 + sum(measured[id(c)][0] for c in children)
        depth = 1 + max((measured[id(c)][1] for c in children), default=0)
        if size > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"config {source}: more than {MAX_CONFIG_VALUES} values once YAML aliases are expanded; refused"
            )
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(f"config {source}: nested more than {MAX_CONFIG_DEPTH} levels deep; refused")
        measured[key] = (size, depth)


def load_config(path: str | Path) -> JobConfig:
    """Read and validate a YAML job config (bounded: see ``MAX_CONFIG_BYTES`` and the rest)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config {path}: {size} bytes, more than the limit {MAX_CONFIG_BYTES}; refused")
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config {path}: file not found") from None
    except OSError as err:
        raise ConfigError(f"config {path}: cannot read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path}: not a text file") from None
    # yaml.safe_load in two steps: the node graph is measured before the document is built from it.
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_yaml_size(node, str(path))
        raw = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config {path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from None
    except RecursionError:
        raise ConfigError(f"config {path}: nested more than {MAX_CONFIG_DEPTH} levels deep; refused") from None
    finally:
        loader.dispose()
    return parse_config(raw, str(path))


def config_to_dict(config: JobConfig) -> dict[str, Any]:
    """The fully resolved config (every default filled in), JSON-compatible."""
    return config.model_dump(mode="json")


def config_to_json(config: JobConfig) -> str:
    return json.dumps(config_to_dict(config), sort_keys=True)


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of a raw config with ``{"training.learning_rate": 0.001, ...}`` set (dotted keys);
    validate the result with ``parse_config``."""
    import copy

    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {dotted!r}: {part!r} is not a section of the job config")
        node[leaf] = value
    return out


def dump_config(config: JobConfig, path: str | Path) -> None:
    """Write the resolved config as YAML that ``load_config`` reads back to an equal config."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def default_config_path() -> Path:
    """The bundled config for the reference ttbar ntuples (and the bundled demo sample)."""
    return Path(__file__).parent / "resources" / "default.yaml"
