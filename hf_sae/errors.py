"""The exceptions hf_sae raises. Each message says what was expected, what was received, and how to fix it.

Each kind of mistake has one class, raised wherever the mistake is caught: a bad argument value is an
`ArgumentError` whether the CLI, a runner or the trainer notices it.
"""


class HfSaeError(Exception):
    """Base class of every error hf_sae raises on purpose; never raised itself."""


class ArgumentError(HfSaeError, ValueError):
    """An argument (a CLI flag, an `*Arguments` field, a function parameter) is out of range or inconsistent."""


class SaeConfigError(HfSaeError, ValueError):
    """A configuration value is out of range or inconsistent with another."""


class WeightsError(HfSaeError, ValueError):
    """Saved weights disagree with their config, or a weights file cannot be read."""


class SaeNotFoundError(HfSaeError, OSError):
    """A folder or repo holds no SAE where one was expected, or holds SAEs in a layout that cannot be mixed."""


class FileFormatError(HfSaeError, ValueError):
    """A file hf_sae reads is malformed: JSON that does not parse or holds the wrong kind of value."""


class HookpointError(HfSaeError, ValueError):
    """A hookpoint does not exist in the model, or its activation does not fit the SAE."""


class SteeringError(HfSaeError, ValueError):
    """A steering or ablation request names latents, amounts or positions that cannot be applied."""


class DataError(HfSaeError, ValueError):
    """A dataset, text column or tokenization setting cannot be used."""


class FeatureMetadataError(HfSaeError, OSError):
    """Feature metadata is missing or cannot be read."""


class ExplainerError(HfSaeError, RuntimeError):
    """The LLM that explains and scores features cannot be reached or loaded."""


class MissingDependencyError(HfSaeError, ImportError):
    """An optional package that this feature needs is not installed."""


class ModelNotFoundError(HfSaeError, OSError):
    """The model named by the user is neither a built-in name, an existing local path, nor a loadable Hub repo."""


class TrainingError(HfSaeError, RuntimeError):
    """Training cannot go on (non-finite loss or activations, an output directory in use, a bad checkpoint)."""


class WriteError(HfSaeError, OSError):
    """A result cannot be written where asked (no permission, no space); the error says what is intact, and where
    a result that was already computed went instead."""


class HubError(HfSaeError, OSError):
    """A repo or revision cannot be found or read, or a push did not go through."""


class CorpusDownloadError(HfSaeError, RuntimeError):
    """A registry download for the built-in corpus failed."""
