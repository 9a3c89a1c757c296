"""The files stages pass to each other: one reader and one writer for each."""
