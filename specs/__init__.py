"""YAML experiment specs: the shipped files and the one schema that validates them."""

from uverify.specs.schema import Spec, load_spec, shipped_specs, spec_sha256

__all__ = ["Spec", "load_spec", "shipped_specs", "spec_sha256"]
