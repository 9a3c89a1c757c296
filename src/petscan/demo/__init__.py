"""The synthetic PET demo data set and the pretraining of its backbone.

generate       the data set and `petscan generate`: patients planned, drawn, imaged
anatomy        the body model: outline, organs, physiological uptake (`build_anatomy`)
truth          a patient's class, lesions and benign findings (written to the files
               of `handoff.ground_truth`)
rendering      one view: projection (MIP), blur, noise, display, file formats
shapes         the 3-D blobs everything is drawn from
volumes        `petscan generate --volumes`: the patients voxelized into PET studies
               (DICOM in several vendors' conventions, NIfTI) for the `ingest` stage
dicom_pet      writing a volume as a DICOM PET series (one file per slice)
pretrain       `petscan pretrain-demo`: the corpus and the run
pretrain_fit   the pretraining network, its epochs, fit and scores
"""
