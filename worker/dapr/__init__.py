"""The Dapr side: the sidecar's HTTP client (`sidecar`) on its HTTP/1.1 transport
(`http1`), the same calls in memory (`memsidecar`), and whether the sidecar has
what the worker needs (`readiness`: /readyz, and `--check`'s metadata checks)."""
