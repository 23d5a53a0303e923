"""Self-training on the unlabelled pool: teachers label it (pseudo.py), rounds of students
train on those labels (rounds.py)."""
