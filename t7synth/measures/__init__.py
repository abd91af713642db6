"""Measures of one guess against its target: PSNR/SSIM/MAE, sharpness, tissue segmentation.

Low in the layers (below models), so fit's test and ``evaluate`` score through the same code.
"""
