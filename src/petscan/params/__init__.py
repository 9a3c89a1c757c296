"""`params.yaml`: its schema (typed sections), reading, loading and messages."""
