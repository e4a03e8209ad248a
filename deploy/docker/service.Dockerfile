# syntax=docker/dockerfile:1
# The prediction service: bentoml serve serving.service:FlightDelayService on port 3000.
# Build from the repository root: docker build -f deploy/docker/service.Dockerfile -t flight-delay-service .
#
# The service runs the model's forward pass in numpy and never imports TensorFlow, so this image
# leaves out tensorflow-cpu and every package that only tensorflow-cpu needs.
# The list below is checked against uv.lock by tests/deploy/test_images_and_workflow.py;
# `python -m deploy.docker.lock_closure tensorflow-cpu` prints it after a lock update.

FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

FROM python:3.11-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
# Bytecode compiled here: the runtime never writes it (read-only root) and starts faster.
# The venv's interpreter is this image's /usr/local/bin/python3.11, the same in the runtime stage.
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/venv
WORKDIR /src
RUN --mount=type=cache,target=/root/.cache/uv \
    --mount=type=bind,source=pyproject.toml,target=pyproject.toml \
    --mount=type=bind,source=uv.lock,target=uv.lock \
    uv sync --frozen --no-dev \
      --no-install-package absl-py \
      --no-install-package astunparse \
      --no-install-package flatbuffers \
      --no-install-package gast \
      --no-install-package google-pasta \
      --no-install-package h5py \
      --no-install-package keras \
      --no-install-package libclang \
      --no-install-package ml-dtypes \
      --no-install-package namex \
      --no-install-package opt-einsum \
      --no-install-package optree \
      --no-install-package setuptools \
      --no-install-package tensorflow-cpu \
      --no-install-package termcolor \
      --no-install-package wheel

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="flight-delay-service" \
      org.opencontainers.image.description="Flight delay prediction service (BentoML)"
# Writable state lives only in these folders (and /tmp, also HOME); on Kubernetes each is an
# emptyDir or a volume and the root filesystem is read-only.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FLIGHT_DELAY_DATA_DIR=/var/lib/flight-delay \
    BENTOML_HOME=/var/lib/bentoml \
    BENTOML_DO_NOT_TRACK=true
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY feature_store.yaml ./
COPY flight_delay/ flight_delay/
COPY features/ features/
COPY serving/ serving/
RUN python -m compileall -q --invalidation-mode checked-hash flight_delay features serving \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app \
    && mkdir -p "$FLIGHT_DELAY_DATA_DIR" "$BENTOML_HOME" \
    && chown 10001:10001 "$FLIGHT_DELAY_DATA_DIR" "$BENTOML_HOME"
USER 10001:10001
EXPOSE 3000
# Kubernetes ignores HEALTHCHECK and probes /livez and /readyz itself; this one serves docker run
# and compose. The slim image has no curl: Python's standard library asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=3)"]
CMD ["bentoml", "serve", "serving.service:FlightDelayService", "--host", "0.0.0.0", "--port", "3000"]
