"""The one exception type of the data layer: its message names the problem and the fix."""


class DataError(RuntimeError):
    """Missing, corrupt or inconsistent data. The message says which path and what to do."""
