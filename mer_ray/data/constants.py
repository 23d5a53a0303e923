"""MER2023's facts, as one built-in dataset description (docs/contracts.md).

Only the synthetic generator and the importer's defaults read these: everything else
reads the dataset from the store or the member files (mer_ray.data.dataset).
"""

from mer_ray.data.dataset import MODALITIES, Dataset, Split

__all__ = ["MODALITIES", "MER2023", "MER2023_FEATURES", "MER2023_COUNTS", "MER_CLASSES",
           "VALENCE_PLACEHOLDER", "PLACEHOLDER_EMOTION", "MER2023_REPORTED"]

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

# The experiment report's numbers on real MER2023 features, (F1, accuracy) per preset:
# what a user with the real features compares a run to (each preset's docstring cites them).
MER2023_REPORTED = {
    "baseline": {"cv": (.7366, .7376), "test1": (.7956, .7956), "test2": (.7450, .7476),
                 "test3": (.8638, .8645)},
    "robust_v1": {"cv": (.7397, .7450), "test1": (.7926, .7956), "test2": (.7349, .7403),
                  "test3": (.8725, .8777)},
    "robust_v2": {"cv": (.7480, .7492), "test1": (.8191, .8175), "test2": (.7284, .7306),
                  "test3": (.8910, .8945)},
    "robust_v3": {"cv": (.7491, .7516), "test1": (.8239, .8248), "test2": (.7609, .7621),
                  "test3": (.8850, .8873)},
}
