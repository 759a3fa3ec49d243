"""The exception hierarchy. Library code raises these; only cli.py maps them to exit codes."""


class MsvolError(Exception):
    """Base of every error msvol raises on purpose."""


class InputError(MsvolError, ValueError):
    """An input file or folder is missing, unreadable or unsuitable (2D, 4D, thick slices, no date)."""


class SpaceError(MsvolError, ValueError):
    """Images that should share a grid or orientation do not."""


class ProtocolError(MsvolError, ValueError):
    """An exam does not conform to the acquisition protocol."""


class ConfigError(MsvolError, ValueError):
    """A protocol/config file has an unknown key or an invalid value."""


class RegistrationError(MsvolError, RuntimeError):
    """A registration failed or did not pass its quality check."""


class ModelError(MsvolError, RuntimeError):
    """The segmentation model is missing, unreadable or incompatible with the input."""


class OutputExistsError(MsvolError, FileExistsError):
    """A finished result is already there; pass --force to redo it."""


class StaleVersionError(MsvolError):
    """A reviewer's write was made against an older version of the subject than the store holds."""


class ReviewStateError(MsvolError):
    """A review step is not possible in the subject's current state (undecided findings, already signed)."""


class UnknownIdError(InputError):
    """A subject, finding or interval id that the findings store does not hold."""
