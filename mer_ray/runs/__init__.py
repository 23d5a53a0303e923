"""A run folder: its member files (members.py), which members a recipe needs and
training the rest (run.py), live progress (progress.py), TensorBoard curves (curves.py),
the Ray driver's state (driver.py), status, the checks before training (preflight.py)
and the pseudo-label tables students read (pseudo_labels.py). No Ray."""
