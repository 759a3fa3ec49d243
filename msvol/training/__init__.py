"""Domain-randomised training of the lesion models on synthetic label maps (not used by the product)."""
