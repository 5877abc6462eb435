"""Model families, one module each (registered with models.family.register_family).

Importing this package imports every module in it, so a new family is one new file here
(plus its model definition): nothing else lists the families. Helper modules that are
not families (llm_weights, vision_files) register nothing."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
