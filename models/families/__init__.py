"""Model families, one module each (registered with models.family.register_family).
Importing this package registers them all; a new family adds its import here."""

from models.families import cnn, llm, moe_llm, portrait, vmoe  # noqa: F401
