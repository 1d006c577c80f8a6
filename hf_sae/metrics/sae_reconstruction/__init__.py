"""The `sae_reconstruction` metric; load it with `evaluate.load(hf_sae.evaluation.reconstruction_metric_path())`."""
