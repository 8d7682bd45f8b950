"""Serving a trained model: the saved bundle, loading, the recommender and the pipeline."""
