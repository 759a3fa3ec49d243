"""msvol: longitudinal MRI monitoring of multiple sclerosis (research software)."""

__version__ = "0.1.0"
