"""A user's own vision code: the model the hf_images example trains."""
