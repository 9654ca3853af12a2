"""Decode implementations. Importing this package registers every impl module in it."""
import importlib
import pkgutil

from harness.impls.base import REGISTRY, DecodeImpl, ImplContext, register  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")
