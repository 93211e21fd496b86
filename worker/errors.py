"""Failures a run step expects. Their message is the run's reason, shown to users as is,
so it never carries a secret, a key or a traceback."""


class StepFailed(Exception):
    """The run cannot go on: end it `failed` with this reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RemoteError(StepFailed):
    """A command or file operation on the pod did not work."""


class CommandTimeout(RemoteError):
    pass


class ConnectError(StepFailed):
    """The pod could not be reached; worth another try later."""

    retryable = True


class HostKeyMismatch(ConnectError):
    """The host presented a different key than the one pinned on this run."""

    retryable = False
