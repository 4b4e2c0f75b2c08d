"""``model.onnx`` beside ``model.keras``: the network for ONNX Runtime users (Athena, CMSSW, C++).

The graph takes the network's scaled inputs, as ``model.keras`` does, with a dynamic batch axis (and
a dynamic object axis): the scaling stays in ``scaler.json`` and docs/onnx.md shows how to apply it
and compute the weights in a few lines of numpy.  Each export is checked against Keras on a batch of
real test events with ONNX Runtime; a mismatch is an error, a missing converter or a graph it wrote that
ONNX Runtime cannot load a logged skip.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from payload.atomic import atomic_path
from payload.progress import log

#: Largest |ONNX Runtime - Keras| accepted on the check batch (float32 networks).
TOLERANCE = 1e-4
INSTALL = "pip install 'grid-payload[onnx]'"


class _ConverterFailed(Exception):
    pass


def available() -> str | None:
    """None when an export can run, else why not."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return f"ONNX export runs on the TensorFlow backend (this job: {keras.backend.backend()})"
    try:
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as err:
        return f"{err.name} is not installed ({INSTALL})"
    return None


def export_onnx(model, path: Path, batch: dict[str, np.ndarray] | np.ndarray) -> dict[str, Any]:
    """Write ``model`` as ONNX to ``path`` (atomically) and check it on ``batch``; its description."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidGraph
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImplementedOp

    reference = np.asarray(model(batch))  # also marks the model as called, which the exporter needs
    try:
        with atomic_path(path) as tmp:
            try:
                with warnings.catch_warnings():  # the converter's NumPy 2 deprecations are not the user's business
                    warnings.simplefilter("ignore")
                    model.export(str(tmp), format="onnx", verbose=False)
            except Exception as err:  # a layer the converter cannot express: the job's other outputs stand
                # Raised out of the block, so atomic_path removes whatever the converter left behind
                # instead of putting a partial file in place.
                raise _ConverterFailed(f"{type(err).__name__}: {str(err)[:200]}") from err
            try:
                session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            except (InvalidGraph, NotImplementedOp) as err:
                # tf2onnx logs ops it cannot map (exact GELU's Erfc) and writes the graph anyway
                why = str(err).rpartition(" failed:")[2]  # past the temporary file's name
                raise _ConverterFailed(f"ONNX Runtime cannot load the graph: {why[:300]}") from err
            names = [i.name for i in session.get_inputs()]
            feed = batch if isinstance(batch, dict) else {names[0]: batch}
            got = session.run(None, {name: np.asarray(feed[name], dtype=np.float32) for name in names})[0]
            difference = float(np.max(np.abs(got - reference))) if reference.size else 0.0
            if not difference <= TOLERANCE:
                raise RuntimeError(
                    f"model.onnx differs from model.keras by {difference:.3g} (> {TOLERANCE}) on "
                    f"{len(reference)} test events"
                )
    except _ConverterFailed as failed:
        log.warning("no model.onnx: the ONNX converter failed (%s)", failed)
        return {"skipped": f"the ONNX converter failed: {failed}"}
    log.info("model.onnx written: ONNX Runtime equals Keras within %.1g on %d test events", difference, len(reference))
    return {
        "file": path.name,
        "inputs": names,
        "outputs": [o.name for o in session.get_outputs()],
        "check": {"events": len(reference), "max_abs_difference": difference, "tolerance": TOLERANCE},
        "scaling": "not folded in: apply scaler.json first (docs/onnx.md)",
    }
