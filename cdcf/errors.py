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


class StoreRefusedError(PipelineError):
    """A store refused a write of the streaming job (a full Redis, a read-only or full offline database): the
    micro-batch is not committed, and the query runs it again from its checkpoint once it restarts."""

    def __init__(self, store: str, exc: Exception) -> None:
        self.store = store
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        super().__init__(
            f"the {store} store refused a write ({detail}); the micro-batch is not committed and runs again once the "
            f"store takes writes"
        )
