"""Event files to a trained model: batches, scaling, augmentation, splits, the models and their
training.  Reads event files through ``payload.ingest``; imports nothing from ``payload.results``."""
