"""Training members: the recipe (presets.py, recipes.py), folds, the pack's randomness
(masks.py), metrics, Adam over packs (pack_adam.py), what a pack trains on
(train_data.py), device numerics (numerics.py), the pack trainer's epoch loop
(trainer.py), its evaluation (evaluate.py) and what it returns (result.py);
reference.py trains one member the readable way, to check the pack."""
