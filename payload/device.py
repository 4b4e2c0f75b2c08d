"""What the job runs on: the Keras backend and any accelerator it sees."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import platform
from typing import Any


def backend() -> str:
    import keras

    return keras.backend.backend()


def gpus() -> list[str]:
    """Names of the GPUs visible to the active Keras backend (empty on CPU)."""
    name = backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if name == "jax":
            import jax

            return [str(d) for d in jax.devices() if d.platform == "gpu"]
        if name == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no accelerator runtime is the same as no accelerator
        return []
    return []


def summary() -> dict[str, Any]:
    """What the job report says about the device: the backend and the GPUs it sees (CPU when none)."""
    found = gpus()
    return {"backend": backend(), "gpus": len(found), "gpu_names": found, "kind": "gpu" if found else "cpu"}


def require_gpu() -> dict[str, Any]:
    """The device summary, or ``DeviceError`` when the backend sees no GPU."""
    from payload.errors import DeviceError

    info = summary()
    if not info["gpus"]:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        raise DeviceError(
            f"--require-gpu: the {info['backend']} backend sees no usable GPU{hint}; the job stops "
            "before any work so the site can retry it on a node with one (run without "
            "--require-gpu to use the CPU)"
        )
    return info


def allocator() -> str:
    """The memory allocator this process runs with: ``tcmalloc`` or ``jemalloc`` when preloaded
    (the image preloads tcmalloc), else ``glibc``."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return "unknown"
    return next((name for name in ("tcmalloc", "jemalloc") if f"lib{name}" in text), "glibc")


def release_free_memory() -> bool:
    """Return the pages the allocator holds free to the system; whether the allocator offers a way.

    tcmalloc (which the image preloads for speed) keeps what a stage freed, the training's batches
    for instance, so without this every later stage's resident memory sits on top of the training's
    peak; glibc's ``malloc_trim`` does the same for its heap."""
    gc.collect()
    # glibc's malloc_trim is in every Linux process: only the allocator in use may be asked.
    name = {"tcmalloc": "MallocExtension_ReleaseFreeMemory", "glibc": "malloc_trim"}.get(allocator())
    release = getattr(ctypes.CDLL(None), name, None) if name else None  # musl has no malloc_trim
    if release is None:
        return False
    release(*((0,) if name == "malloc_trim" else ()))
    return True


def describe() -> dict[str, Any]:
    import keras
    import numpy as np

    info: dict[str, Any] = {
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "keras": keras.__version__,
        "backend": backend(),
        "numpy": np.__version__,
        "gpus": gpus(),
        "allocator": allocator(),
    }
    for module in ("tensorflow", "jax", "torch", "uproot", "awkward", "h5py"):
        with contextlib.suppress(Exception):  # not installed, or broken: leave it out
            info[module] = __import__(module).__version__
    return info
