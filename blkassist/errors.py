"""Errors that reach the user: each names the file or config key at fault and the fix."""


class BlkAssistError(Exception):
    """Base class for errors caused by the user's input rather than by a bug."""


class ConfigError(BlkAssistError):
    """A config value is wrong; the message names the dotted key."""


class InputImageError(BlkAssistError):
    """A source image cannot be used; the message names the file."""


class ModelFileError(BlkAssistError):
    """A model weight file is missing or does not fit the architecture."""


class CanvasError(BlkAssistError):
    """An intermediate canvas cannot be read (damaged on disk); the message names it."""
