"""MER2023's facts, as one built-in dataset description (see shared DESIGN.md).

Only the synthetic generator and the importer's defaults read these: everything else
reads the dataset from the store or the member files (mer_ray.dataset).
"""

from mer_ray.dataset import MODALITIES, Dataset, Split

__all__ = ["MODALITIES", "MER2023", "MER2023_FEATURES", "MER2023_COUNTS", "MER_CLASSES",
           "VALENCE_PLACEHOLDER", "PLACEHOLDER_EMOTION"]

# The six classes of MER2023, MER2024, MER2025 Track 1 and MER2026 Track 1, in order.
MER_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")

MER2023 = Dataset(
    name="MER2023",
    classes=MER_CLASSES,
    splits=(
        Split("train", "train", valence=True),
        Split("test1", "test", valence=True),  # MER-MULTI (clean)
        Split("test2", "test", valence=True),  # MER-NOISE
        Split("test3", "test", valence=False),  # MER-SEMI: discrete labels only
    ),
)

# modality -> (MERTools feature folder name, dimension)
MER2023_FEATURES = {
    "audio": ("chinese-hubert-large-UTT", 1024),
    "text": ("Baichuan-13B-Base-UTT", 5120),
    "video": ("clip-vit-large-patch14-UTT", 768),
}

# Per-split class counts, in class order (MER2023 paper / MERTools label file).
MER2023_COUNTS = {
    "train": (871, 822, 689, 383, 462, 146),
    "test1": (88, 105, 93, 50, 57, 18),
    "test2": (123, 98, 87, 40, 52, 12),
    "test3": (166, 183, 169, 257, 45, 14),
}

# MERTools writes this valence where a sample has none (MER2023 test3, MER2024 onwards).
VALENCE_PLACEHOLDER = -10.0
# ...and this emotion for every sample of a test set handed out unlabelled (MER2024+).
PLACEHOLDER_EMOTION = "neutral"
