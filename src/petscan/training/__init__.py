"""Fitting the classifier's head (cached features) or the whole network."""
