"""``provrepair.repair`` and ``provrepair.certify`` are both the subpackages the layout promises and
the API functions the product promises: calling the package calls the function. The function is
imported at call time, so importing the package (``provrepair.certify`` must not load the
repairers) costs nothing."""

from __future__ import annotations

import importlib
import sys
import types


class CallablePackage(types.ModuleType):
    __call_target__ = ""  # "module:function"

    def __call__(self, *args, **kwargs):
        module, _, name = self.__call_target__.partition(":")
        return getattr(importlib.import_module(module), name)(*args, **kwargs)


def make_callable(package: str, target: str) -> None:
    """Make the (already imported) ``package`` callable as ``target``."""
    mod = sys.modules[package]
    mod.__class__ = CallablePackage
    mod.__call_target__ = target
