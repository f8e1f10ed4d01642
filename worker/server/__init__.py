"""The HTTP server side: the raw ASGI apps of the app port and the ops port (`app`),
uvicorn plumbing (`serving`), and ports opened with one-line errors (`listen`)."""
