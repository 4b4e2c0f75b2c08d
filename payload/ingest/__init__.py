"""Inputs to event files: finding and reading ROOT inputs, converting them to the padded HDF5 layout,
their statistics.  Imports nothing from ``payload.learn`` or ``payload.results``."""
