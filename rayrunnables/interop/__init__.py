"""Bridges to other runnable libraries; each lives in its own module and imports its library there only."""
