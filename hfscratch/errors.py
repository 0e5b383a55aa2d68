"""Errors a user can fix. The CLI and recipes print them as one line and exit with code 2."""


class HfscratchError(Exception):
    """A problem with the user's input, named together with the fix; shown without a traceback."""


class ConfigError(HfscratchError, ValueError):
    """A recipe/config value that is unknown, of the wrong type or inconsistent."""


class DataError(HfscratchError):
    """Missing, unreadable or empty data."""


class CheckpointError(HfscratchError):
    """A missing, corrupt or foreign checkpoint/model folder."""


class HubError(HfscratchError):
    """A Hub request that failed in a way the user can act on (auth, missing repo, network)."""
