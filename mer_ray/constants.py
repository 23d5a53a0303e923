"""MER2023 facts the whole project is built against (see shared DESIGN.md)."""

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")

# modality -> (MERTools feature folder name, dimension)
MODALITIES = ("audio", "text", "video")
DEFAULT_FEATURES = {
    "audio": ("chinese-hubert-large-UTT", 1024),
    "text": ("Baichuan-13B-Base-UTT", 5120),
    "video": ("clip-vit-large-patch14-UTT", 768),
}

SPLITS = ("train", "test1", "test2", "test3")
TEST_SPLITS = ("test1", "test2", "test3")
# Splits scored on the discrete label only (test3 has no valence).
DISCRETE_ONLY_SPLITS = ("test3",)

# Per-split class counts, in CLASSES order (MER2023 paper / MERTools label file).
CLASS_COUNTS = {
    "train": (871, 822, 689, 383, 462, 146),
    "test1": (88, 105, 93, 50, 57, 18),
    "test2": (123, 98, 87, 40, 52, 12),
    "test3": (166, 183, 169, 257, 45, 14),
}

# MERTools writes this placeholder where test3 has no valence.
VALENCE_PLACEHOLDER = -10.0
