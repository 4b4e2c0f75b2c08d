"""A model judged and packaged: predictions, metrics, closure, plots, manifests, bundles, merging many
jobs.  May use ``payload.learn`` and ``payload.ingest``; neither imports it."""
