"""The pipeline's exceptions. Messages are full sentences that say what to do."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose; the CLI prints it as one line."""


class ConfigError(PipelineError):
    """Settings are missing or invalid."""


class PrerequisiteError(PipelineError):
    """A program the stack needs (Java, Maven, PostgreSQL, Redis) is missing or unusable."""


class JarResolutionError(PipelineError):
    """The jar cache is empty and Maven could not fill it."""


class ServiceError(PipelineError):
    """A service could not be started, reached or stopped."""
