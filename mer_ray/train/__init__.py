"""Training members: the recipe (presets.py, recipes.py), folds, the pack's randomness
(masks.py), metrics, Adam over packs, the pack trainer (trainer.py) and what it returns
(result.py); reference.py trains one member the readable way, to check the pack."""
