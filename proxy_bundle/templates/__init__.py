"""Auto3DSeg algorithm templates: per-template proxy adapters, shipped templates/bundles, export to AutoRunner."""

from proxy_bundle.templates.adapters import ADAPTERS, TemplateAdapter, adapter_for
from proxy_bundle.templates.resources import bundles_dir, templates_dir

__all__ = ["ADAPTERS", "TemplateAdapter", "adapter_for", "bundles_dir", "templates_dir"]
