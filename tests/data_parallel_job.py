"""Run by tests/test_distribute.py in a fresh process: the quick job with ``training.data_parallel: all``
on two CPU devices (TensorFlow: two logical CPUs, configured before anything else starts TensorFlow;
JAX: XLA_FLAGS=--xla_force_host_platform_device_count=2 in the environment)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from helpers import DATA, quick_job_config

from payload.config import config_to_dict, load_config, parse_config
from payload.errors import ConfigError
from payload.job import train_job


def main(out: Path) -> None:
    raw = config_to_dict(load_config(quick_job_config(out / "job.yaml")))
    raw["training"].update(data_parallel="all", epochs=2)
    result = train_job(
        parse_config(raw), str(DATA / "sample_A.root"), str(DATA / "sample_B.root"), out / "job", progress=False
    )
    raw["training"]["batch_size"] = 1023
    try:
        train_job(
            parse_config(raw), str(DATA / "sample_A.root"), str(DATA / "sample_B.root"), out / "odd", progress=False
        )
        odd = "no error"
    except ConfigError as err:
        odd = err.message
    training = result.metrics["training"]
    print(
        "RESULT "
        + json.dumps(
            {
                "replicas": training["replicas"],
                "best_loss": training["best_loss"],
                "epochs": training["epochs_run"],
                "auc": result.metrics["test"]["auc"],
                "odd": odd,
            }
        )
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
