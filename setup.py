"""Build configuration beyond setup.cfg: ship the repository's templates and bundles inside the wheel.

``algorithm_templates/`` and ``bundles/`` stay at the repository root (where Auto3DSeg and MONAI bundle users
expect them) and become the package-data packages ``proxy_bundle.algorithm_templates`` and
``proxy_bundle.bundles``; ``proxy_bundle.templates.resources`` finds them with ``importlib.resources``. Declared
here because setup.cfg's ``packages = find:`` cannot list packages whose folders live outside ``proxy_bundle/``.
"""

from setuptools import find_packages, setup

DATA = {"proxy_bundle.algorithm_templates": "algorithm_templates", "proxy_bundle.bundles": "bundles"}

setup(
    packages=find_packages(include=["proxy_bundle", "proxy_bundle.*"]) + list(DATA),
    package_dir=dict(DATA),
    # Everything under both folders, whatever the bundles are named; byte-code caches are not shipped.
    package_data={name: ["**/*"] for name in DATA},
    exclude_package_data={name: ["**/__pycache__/*", "**/*.pyc"] for name in DATA},
)
