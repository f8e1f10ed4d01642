# syntax=docker/dockerfile:1
# reminder-worker image: build a virtualenv from pyproject.toml, then copy only
# that virtualenv into a clean runtime image (no pip cache, no build tools).

# Pinned to a patch release; bump both stages together (they must match, the
# virtualenv's interpreter is a symlink into the base image).
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Metadata first: the dependency layer is reused while only worker/ changes.
# Only worker/: the development sidecar (devsidecar/, for laptops and tests) stays
# out of the image, and `reminder-worker --dev` says so here.
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install --no-cache-dir . \
    && python -m compileall -q -j 0 /opt/venv


FROM python:3.11.14-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="reminder-worker" \
      org.opencontainers.image.description="Reminder and recurrence daemon behind a Dapr sidecar"

# The root filesystem is read-only at run time, so nothing may be compiled
# then: the official image ships the standard library without .pyc files,
# compile it here once.
RUN python -m compileall -q -j 0 /usr/local/lib/python3.11

COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# Numeric, so Kubernetes can verify runAsNonRoot without a passwd entry.
USER 10001:10001

# 8080: app port, called by the Dapr sidecar over loopback.
# 9464: ops port, /metrics /healthz /readyz.
EXPOSE 8080 9464

ENTRYPOINT ["reminder-worker"]
