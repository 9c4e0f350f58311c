"""Watching a deployed model over time: ``alignkit monitor`` (see :mod:`alignkit.monitor.run`)."""

from alignkit.monitor.run import Monitor, MonitorConfig, parse_duration
from alignkit.monitor.sequential import log_mixture_lr, scan, threshold

__all__ = ["Monitor", "MonitorConfig", "log_mixture_lr", "parse_duration", "scan", "threshold"]
