"""Small helpers every package uses: errors, atomic files, logging, redaction."""
