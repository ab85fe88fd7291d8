"""conveyor: a DevOps workflow kit for Python services."""

__version__ = "0.1.0"
