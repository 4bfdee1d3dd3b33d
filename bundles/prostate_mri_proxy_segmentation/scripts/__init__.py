"""This bundle's own Python code (MONAI bundles keep custom code in ``scripts/``).

``data`` (datalists, the train/validation split and the input checks), ``progress`` (the per-validation
progress file and resuming) and ``scaling`` (the proxy versions of ``network_def``) are what the configs call,
so ``monai``, ``torch``, ``nibabel`` and ``pytorch-ignite`` are enough to train, evaluate and infer.

``errors``, ``validation`` and ``scaling`` are copies of the modules of the same name in the proxy-bundle
package (``proxy_bundle/errors.py``, ``proxy_bundle/validation.py``, ``proxy_bundle/networks/scaling.py``):
a model-zoo bundle cannot depend on that package, and a copy keeps the bundle's checks and proxy networks exactly
those of the search that tunes it. The package's test suite fails when a copy differs from its module.
"""
