"""The classifier: backbones, the head, losses and learning-rate schedules."""
