"""Metric modules for the Hugging Face `evaluate` library, shipped inside hf_sae so that they load offline."""
