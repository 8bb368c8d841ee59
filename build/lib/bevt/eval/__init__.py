"""Evaluation: multi-view classification, the temporal dependency test, and prediction on files."""
