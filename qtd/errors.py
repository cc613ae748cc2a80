"""User-facing errors. Each message says what went wrong and what to change.

The CLI and ``python -m qtd.train`` print these as one line (:func:`one_line`) and exit non-zero, never as
a traceback.
"""

MAX_MESSAGE_CHARS = 2000  # one printed error line at most; each echoed value is cut shorter (qtd.config.shown)


def one_line(message: object) -> str:
    """``message`` as one printable line of at most ``MAX_MESSAGE_CHARS`` characters.

    Messages cut the values they echo (:func:`qtd.config.shown`); this is the last bound, for text that
    comes from elsewhere (a library's exception, a peer's report).
    """
    raw = str(message)
    text = " ".join(raw[:2 * MAX_MESSAGE_CHARS].split())  # never split or copy more than is shown
    if len(text) > MAX_MESSAGE_CHARS or len(raw) > 2 * MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS - 40] + f"... ({len(raw):,} characters in all)"
    return text


class QtdError(Exception):
    """Base class of every error qtd reports to a user as one clear message."""


class ConfigError(QtdError, ValueError):
    """A config value, key or file that qtd cannot use."""


class TopologyError(QtdError, ValueError):
    """A graph or mixing matrix that cannot be used (disconnected, not doubly stochastic, ...)."""


class DataError(QtdError, ValueError):
    """A dataset that cannot be found, read or split as asked."""


class WireFormatError(QtdError, ValueError):
    """A wire message that is malformed or does not match what the receiver expects."""


class PeerError(QtdError, RuntimeError):
    """A peer process that died, stalled past the timeout or sent something unusable. ``culprit`` is the
    node that caused it, where it is known (the launcher's last line names it)."""

    def __init__(self, message: str, culprit: int | None = None, stalled: bool = False) -> None:
        super().__init__(message)
        self.culprit = culprit
        self.stalled = stalled  # nothing came within comm.timeout_s (rather than a closed connection)


class DivergedError(QtdError, ValueError):
    """A model (or a message made from it) holding NaN or inf: the training diverged."""


class CheckpointError(QtdError, ValueError):
    """A checkpoint file that is truncated, foreign or does not match the run."""


class ReplicaDriftError(QtdError, RuntimeError):
    """Parameter-server replicas whose server state (theta, AMSGrad moments) no longer agree."""
