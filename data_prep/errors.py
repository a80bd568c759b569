"""The one exception type of the data pipeline: its message is the whole user-facing error line."""


class DataPrepError(Exception):
    """Bad input or a bad output directory; the message names the file or argument at fault."""
