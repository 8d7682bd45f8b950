"""The model card, dataset citations and publishing to the Hub."""
