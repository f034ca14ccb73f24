"""The ferrumc exception tree: every error says what failed, where, and how to fix it."""


class FerrumError(Exception):
    """Base of every error ferrumc raises on purpose; the CLI prints it as one line."""


class UnsupportedModel(FerrumError):
    """A checkpoint uses an architecture, tensor type or feature ferrumc does not support."""


class CheckpointError(FerrumError):
    """A checkpoint on disk is missing, truncated or inconsistent."""


class VerifyError(FerrumError):
    """An IR graph is ill-typed or malformed."""


class ParseError(FerrumError):
    """IR text could not be parsed."""


class PassError(FerrumError):
    """A compiler pass could not be applied."""


class CodegenError(FerrumError):
    """Code generation failed or was asked for something it cannot do (e.g. an unknown target)."""


class BundleError(FerrumError):
    """A compiled bundle is invalid, corrupted or incompatible with this machine."""


class RequestError(FerrumError):
    """A generation request is invalid (bad parameters, prompt too long, ...).

    `code` and `param` are what an OpenAI-style error body reports ("context_length_exceeded",
    "max_tokens"); both stay None where no client is concerned.
    """

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param
