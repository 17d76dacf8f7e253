"""Training data for the built-in model: simulator episodes, vision-language questions, datasets."""
