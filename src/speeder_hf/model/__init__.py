"""The model: `SpeederConfig`, `SpeederForSequentialRec` and its parts (MRC, SPAE, the candidate pointer, the
item feature table, the content and collaborative priors, the SASRec network)."""
