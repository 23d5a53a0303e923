"""The features: what a dataset is (dataset.py, constants.py), the feature store every
later step reads (store.py; its manifest manifest.py, its row checks checks.py), the
MERTools importer (mertools.py, reading labels.py and features.py) and the synthetic
generator (synth.py; written out by synth_files.py). No torch, no Ray."""
