"""From scanner files to the labelled class folders `split` reads (the stage: `pipeline.ingest`).

suv            the SUV body-weight factor per slice, for every Units x DecayCorrection case
dicom_series   DICOM files -> PET series: grouping, slice order, geometry checks, rescale
nifti          NIfTI volumes -> canonical (RAS) orientation, SUV or Bq/ml
mip            isotropic resampling and rotating maximum-intensity projections -> 16-bit PNG
pseudonym      keyed-hash pseudonyms of patient ids (the key never in the repository)
labels         the labels table: the only source of classes, and supplied header values
report         the per-study sidecar table (scale factor, times, voxel size, exclusions)
studies        one study from its files to its views (one bad study never stops the others)
"""
