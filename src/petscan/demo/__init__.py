"""The synthetic PET demo data set and the pretraining of its backbone."""
