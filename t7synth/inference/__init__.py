"""Inference: checkpoints, whole-volume tiling, grids and synthesising new scans."""
