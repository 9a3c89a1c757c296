"""Image files, the labelled folder's index, the split, the input pipeline, features."""
