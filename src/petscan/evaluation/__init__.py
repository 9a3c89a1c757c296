"""Metrics, figures, Grad-CAM heatmaps and their localization."""
