"""The item catalog: item ids and texts (`item_catalog`, `item_index`), their features from pretrained
encoders (`encoders`) and from a trained SASRec (`sasrec`)."""
