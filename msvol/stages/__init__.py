"""The pipeline's stages: pure computation on typed objects (no file writes). A stage never imports
another stage; msvol.pipeline composes them."""
