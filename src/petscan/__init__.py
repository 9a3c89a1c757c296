"""PET scan classification pipeline."""
