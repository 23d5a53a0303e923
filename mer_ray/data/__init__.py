"""The features: what a dataset is (dataset.py, constants.py), the feature store every
later step reads (store.py), the MERTools importer (mertools.py) and the synthetic
generator (synth.py). No torch, no Ray."""
