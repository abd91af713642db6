"""Evaluation: image scores, the score-table vocabulary, evaluating predictions, comparing runs."""
