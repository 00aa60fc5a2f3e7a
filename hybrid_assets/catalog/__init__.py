"""The catalog of test cases (data) and the profiles that scale them."""

from hybrid_assets.catalog.loader import PROFILES, Case, CatalogError, load_catalog, resolve_profile

__all__ = ["PROFILES", "Case", "CatalogError", "load_catalog", "resolve_profile"]
