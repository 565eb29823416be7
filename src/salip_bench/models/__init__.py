"""Foundation models (SAM, CLIP) and where their weights come from."""
