"""Measures of one guess against its target: PSNR/SSIM/MAE, sharpness, tissue segmentation; low enough for fit's test and evaluate to share."""
