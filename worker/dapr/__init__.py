"""The Dapr side: the sidecar's HTTP client (`sidecar`) on its HTTP/1.1 transport
(`http1`), and the same calls in memory (`memsidecar`)."""
