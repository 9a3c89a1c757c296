"""The labelled images, from files on disk to batches and cached features.

folders        listing image files (symbolic links followed safely, names checked)
images         reading one file into 8-bit RGB; which images are usable (`ImageRules`)
index          indexing and validating the labelled folder (`data.raw_dir`)
split          the train / val / test split algorithm (the stage: `pipeline.split`)
folds          the one patient-grouped k-fold definition over train + val (`train.protocol:
               cv` and `tune.cv_folds`)
tf_data        files -> tf.data batches, the training augmentation
features       the backbone's feature cache: computing, writing, loading (the stage:
               `pipeline.featurize`)
contact_sheet  `petscan contact-sheet`: a PNG with a few images per class
"""
