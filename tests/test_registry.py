"""Registries refuse duplicates and answer unknown names with the available ones."""

import pytest

from fedjax_med.registry import Registry


def test_registry_duplicates_and_unknown_names():
  registry = Registry("widget")
  registry.register("alpha", "beta")(object)
  assert "alpha" in registry and sorted(registry) == ["alpha", "beta"]
  with pytest.raises(KeyError, match="The widget name 'alpha' was already registered."):
    registry.add("alpha", 1)
  with pytest.raises(ValueError, match=r"config.widget 'alpah' is not known; available: \['alpha', 'beta'\]\. "
                                       r"Did you mean 'alpha'\?"):
    registry.get("alpah", what="config.widget")
