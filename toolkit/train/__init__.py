"""Training the toolkit's own models: the V-MoE on images (vmoe_trainer), its super-class
router targets (superclass)."""
