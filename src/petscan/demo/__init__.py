"""The synthetic PET demo data set and the pretraining of its backbone.

generate       the data set and `petscan generate`: patients planned, drawn, imaged
anatomy        the body model: outline, organs, physiological uptake (`build_anatomy`)
truth          a patient's class, lesions and benign findings (written to the files
               of `handoff.ground_truth`)
rendering      one view: projection (MIP), blur, noise, display, file formats
shapes         the 3-D blobs everything is drawn from
pretrain       `petscan pretrain-demo`: the corpus and the run
pretrain_fit   the pretraining network, its epochs, fit and scores
"""
