"""From rows to model inputs: the prompt protocol (`prompts`) and the batch collator (`collator`)."""
