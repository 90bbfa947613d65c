# The hub image used by docker-compose.yml. It talks to the NATS and PostgreSQL given by AGENTHUB_NATS_URL and
# AGENTHUB_DATABASE_URL, so it starts neither embedded server.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY agenthub agenthub
COPY collaboration collaboration
COPY web_ui web_ui
COPY mcp_server mcp_server
RUN pip install --no-cache-dir .
RUN useradd --system --create-home hub && mkdir /data && chown hub /data
USER hub
EXPOSE 8765
CMD ["agenthub", "serve", "--host", "0.0.0.0", "--data-dir", "/data"]
