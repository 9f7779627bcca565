"""Evaluation: the classifier for a suite dataset, the clean harness, aggregates and the result store."""
