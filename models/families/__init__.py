"""Model families, one module each (registered with models.family.register_family)."""
