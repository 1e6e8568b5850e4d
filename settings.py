"""Every setting of the gateway (a thin entry point; the code is image_gateway/settings.py)."""
from image_gateway.settings import Settings, load

__all__ = ["Settings", "load"]
