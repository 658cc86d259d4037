"""The engine every backend shares: the scheduler (``scheduler``: chunking, windows, ordering,
cancellation), the in-process runner (``inprocess``: branches and chunks in this process), the
execution classes (``execution``: computing or waiting), and how inputs are shared (``sharing``)."""
