"""Evaluation: evaluating predictions (evaluate, montage), the perceptual distance, comparing runs."""
