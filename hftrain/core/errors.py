"""The one error type users see.

Anything the user can fix (a path, a column, a label, a config value) is raised as `HFTrainError` with a
message that names the problem, where it is, and what to do. The CLI prints the message without a
traceback (set ``HFTRAIN_DEBUG=1`` to get one) and exits with status 2.
"""


class HFTrainError(Exception):
    """A problem in the user's config, data, model or checkpoint, with a message saying how to fix it."""
