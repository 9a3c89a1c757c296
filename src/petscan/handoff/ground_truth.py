"""The demo generator's ground truth, read by the explain stage and by pretraining.

    <data.raw_dir>/.ground_truth.csv   one row per image: patient, class, sex, ...
    <data.raw_dir>/.lesions.csv        one row per lesion per image (`LESION_COLUMNS`)

Both names start with a dot, so the image listing (`data.folders`) skips them.
"""

TRUTH_FILE = ".ground_truth.csv"
LESIONS_FILE = ".lesions.csv"
LESION_COLUMNS = (
    "path", "patient", "view", "lesion", "kind", "col", "row", "diam_mm", "radius_col",
    "radius_row", "px_per_mm_col", "px_per_mm_row", "suv", "contrast", "in_view", "visible",
)  # fmt: skip
