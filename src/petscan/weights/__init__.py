"""The backbone's weights: sources, downloads, checks and fallbacks."""
