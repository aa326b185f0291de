"""Reports from a run folder's result files: one self-contained HTML page with figures, and a markdown summary."""

from .collect import RunContents, collect
from .render import render_report

__all__ = ["RunContents", "collect", "render_report"]
