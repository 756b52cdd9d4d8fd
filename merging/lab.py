"""The app's service, kept importable from its old place: it lives in `merging.service`."""
from .service.config import LabConfig
from .service.lab import Lab
from .service.session import LabSession

__all__ = ["Lab", "LabConfig", "LabSession"]
