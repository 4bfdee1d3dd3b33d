"""Scaled-down proxy versions of MONAI segmentation networks and their measured cost."""

from proxy_bundle.networks.scaling import ProxySpec, full_kwargs, num_levels, scaled_kwargs, scaled_network

__all__ = ["ProxySpec", "full_kwargs", "num_levels", "scaled_kwargs", "scaled_network"]
