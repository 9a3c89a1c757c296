"""Using a trained model: loading, prediction, the scoring server, the web app."""
