"""The exceptions hf_sae raises. Each message says what was expected, what was received, and how to fix it."""


class HfSaeError(Exception):
    """Base class of every error hf_sae raises on purpose."""


class SaeConfigError(HfSaeError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class WeightsError(HfSaeError, ValueError):
    """Saved weights disagree with their config, or a weights file cannot be read."""


class HookpointError(HfSaeError, ValueError):
    """A hookpoint does not exist in the model, or its activation does not fit the SAE."""


class DataError(HfSaeError, ValueError):
    """A dataset, text column or tokenization setting cannot be used."""


class MissingDependencyError(HfSaeError, ImportError):
    """An optional package that this feature needs is not installed."""


class TrainingError(HfSaeError, RuntimeError):
    """Training cannot go on (non-finite loss or activations, an output directory in use)."""
