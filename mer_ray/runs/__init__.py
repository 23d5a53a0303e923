"""A run folder: its member files (members.py), which members a recipe needs and
training the rest (run.py), live progress and curves (progress.py), status, the checks
before training (preflight.py) and the pseudo-label tables students read. No Ray."""
