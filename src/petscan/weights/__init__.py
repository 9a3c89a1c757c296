"""The frozen backbone's weights: where they come from and whether they are the right ones.

    sources     the four kinds of source (file, url, kaggle, huggingface), pins, zip members
    http        the https download: resumable, size-capped, deadline, checked redirects
    drive       Google Drive share links and their virus-scan confirmation pages
    transfer    copying bytes under a budget; part files and their resume records
    checks      HDF5 inspection: does the file load into the configured backbone?
    fallback    the shipped demo backbone, a seeded random init, Keras' ImageNet weights
    errors      WeightsError, SourceError, and exceptions as one line without credentials

The stage that uses them is `petscan.pipeline.fetch_weights`. Nothing here trusts what it
is sent: https only, every remote file pinned by its sha256, archive members never
extracted by their own names, and a wrong file described by its type and size, never by
its content; URLs are shown without credentials or query (`utils.redact`).
"""
