"""The files stages pass to each other: one reader and one writer for each.

records    weights.json, {split}.json of the feature cache, train.json, history.csv
           columns (`WeightsInfo`, `FeatureMeta`, `TrainInfo`, `banner`)
manifests  the split manifests `{train,val,test}.csv` and their one reader `read_manifest`
results    predictions, the explain gallery, metrics.json / metrics_full.json
"""
