# syntax=docker/dockerfile:1
# The Dagster user code: the code server of the Dagster Helm chart's user deployment, and the
# image the K8sRunLauncher gives every run pod (and the k8s executor every step pod).
# Build from the repository root: docker build -f deploy/docker/user-code.Dockerfile -t flight-delay-user-code .

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
    uv sync --frozen --no-dev

FROM python:3.11-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="flight-delay-user-code" \
      org.opencontainers.image.description="Flight delay Dagster user code (code server, run and step pods)"
# Writable state lives only in these folders (and /tmp, also HOME); on Kubernetes each is an
# emptyDir or a volume and the root filesystem is read-only. DAGSTER_HOME is where the Helm chart
# mounts the instance's dagster.yaml.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    FLIGHT_DELAY_DATA_DIR=/var/lib/flight-delay \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    BENTOML_DO_NOT_TRACK=true \
    TF_CPP_MIN_LOG_LEVEL=2
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# pyproject.toml and uv.lock: the prediction_bento asset exports the Bento's requirements from them.
COPY pyproject.toml uv.lock feature_store.yaml .feastignore workspace.yaml ./
COPY flight_delay/ flight_delay/
COPY features/ features/
COPY serving/ serving/
COPY pipeline/ pipeline/
RUN python -m compileall -q --invalidation-mode checked-hash flight_delay features serving pipeline \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin app \
    && mkdir -p "$FLIGHT_DELAY_DATA_DIR" "$DAGSTER_HOME" \
    && chown 10001:10001 "$FLIGHT_DELAY_DATA_DIR" "$DAGSTER_HOME"
USER 10001:10001
EXPOSE 4000
# No HEALTHCHECK: one image plays three roles and only the code server listens (a run or step pod
# would be reported unhealthy), and Kubernetes ignores HEALTHCHECK anyway: the Helm chart probes
# the code server with `dagster api grpc-health-check -p 4000`.
# checkov:skip=CKV_DOCKER_2:run and step pods use this image too and listen on nothing; Kubernetes probes the code server
# No ENTRYPOINT either: the Helm chart and the K8sRunLauncher set only the container's args
# (`dagster api grpc ...`, `dagster api execute_run ...`), which an ENTRYPOINT would prefix.
CMD ["dagster", "api", "grpc", "-m", "pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
