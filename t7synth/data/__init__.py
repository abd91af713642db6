"""Data: dataset folders, preprocessing, augmentation, sampling and the demo dataset."""
