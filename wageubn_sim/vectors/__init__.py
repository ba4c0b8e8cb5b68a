"""Test vectors for RTL: bundles of memory images with a manifest, and their verification."""
from .bundle import write_bundle
from .verify import BundleError, VerifyReport, load_bundle, verify_bundle

__all__ = ["BundleError", "VerifyReport", "load_bundle", "verify_bundle", "write_bundle"]
