"""proxy-bundle: proxy data and proxy networks for cheaper hyper-parameter search in 3D segmentation (MONAI)."""

__version__ = "0.1.0"
