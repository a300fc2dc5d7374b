"""The repairers: one module each (aprnn, polytope, deeppatch, metarepair, finetune, augmix,
pipeline), one protocol (:mod:`.protocol`), typed options (:mod:`.options`) and the registry
(:mod:`.registry`). Calling the package, ``provrepair.repair(model, spec, layer=...)``, is the API's
``repair``."""

from ..callable_package import make_callable

make_callable(__name__, "provrepair.api:repair")
