"""Multi-site phantom datasets (spleen CT, prostate MR) in Medical Segmentation Decathlon layout.

They stand in for MSD data that cannot be downloaded: anatomically arranged, intensity-calibrated
scenes with per-site acquisition differences, atypical cases and an unseen external site. Entry
point: :func:`proxy_bundle.phantoms.generate.generate_dataset` (CLI: ``proxy_bundle phantoms``).
"""
