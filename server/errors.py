"""Domain errors that carry their HTTP status; one handler turns them into JSON."""


class CaddieError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(CaddieError):
    status_code = 401


class Forbidden(CaddieError):
    status_code = 403


class NotFound(CaddieError):
    status_code = 404


class Conflict(CaddieError):
    status_code = 409


class InvalidTransition(Conflict):
    pass


class LeaseLost(Conflict):
    """The run's lease moved to another worker (its fence changed): stop acting on it."""
