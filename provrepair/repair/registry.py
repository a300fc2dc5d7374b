"""Every repairer under one name. Adding a repairer is its module (a class that implements
:class:`~provrepair.repair.protocol.Repairer`) and one line here.

Entries are import paths, so listing the repairers imports none of them (``provrepair --help``
stays fast), and one that fails to import breaks nothing but itself.
"""

from __future__ import annotations

import difflib
import importlib

from ..errors import InputError
from .protocol import Repairer

__all__ = ["REPAIRERS", "RepairerUnavailableError", "get_repairer", "load_class", "repairer_class"]

REPAIRERS = {
    "aprnn": "provrepair.repair.provable:PointRepairer",
    "polytope": "provrepair.repair.provable:RegionRepairer",
    "polish": "provrepair.repair.pipeline:PolishRepairer",
    "finetune": "provrepair.repair.finetune:FinetuneRepairer",
    "augmix": "provrepair.repair.augmix:AugmixRepairer",
    "deeppatch": "provrepair.repair.deeppatch:DeepPatchRepairer",
    "metarepair": "provrepair.repair.metarepair:MetaRepairRepairer",
}


class RepairerUnavailableError(InputError):
    """A registered repairer cannot run here (its module is missing or does not import)."""


def load_class(path: str, what: str, hint: str = "") -> type:
    """The class at ``"module:Class"``, imported now; ``what`` names it in the error."""
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise RepairerUnavailableError(f"{what} is registered but cannot be loaded ({type(exc).__name__}: {exc}); "
                                       f"{hint or 'update provrepair, or leave this method out'}") from None


def repairer_class(name: str, hint: str = "") -> type:
    """The class registered as ``name`` (or at ``"module:Class"``), imported now."""
    if ":" in name:
        return load_class(name, f"repairer {name!r}", hint)
    path = REPAIRERS.get(name)
    if path is None:
        close = difflib.get_close_matches(str(name), list(REPAIRERS), n=1)
        extra = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown repairer {name!r}{extra}; available: {', '.join(REPAIRERS)}")
    return load_class(path, f"repairer {name!r}", hint)


def get_repairer(name: str, hint: str = "") -> Repairer:
    """An instance of the repairer registered as ``name``."""
    return repairer_class(name, hint)()
