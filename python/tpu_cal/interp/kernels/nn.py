"""Convolution-family kernels (conv, deconv, pools, resize, pad, norms)."""
