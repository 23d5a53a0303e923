"""Ray around the run: joining or starting a cluster (cluster.py), planning workers per
node (plan.py), a run's members as one Ray Train job (train.py) and a grid of settings as
Ray Tune trials (tune.py)."""
