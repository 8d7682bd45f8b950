"""speeder_hf_train: the training application built on the `speeder_hf` library: the fine-tuning job
(`finetune`), the `speeder-hf` command line (`cli`) and the web demo (`app`). The library never imports it."""
