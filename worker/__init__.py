"""reminder-worker: reminders and recurrences behind a Dapr sidecar."""

__version__ = "0.1.0"
