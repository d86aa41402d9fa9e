# consul-router: the image its users run next to Consul and Registrator.
#   docker build -t consul-router .
#   docker run -p 9999:9999 -p 9998:9998 -e FABIO_REGISTRY_CONSUL_ADDR=consul:8500 consul-router
# Configuration: mount a fabio.properties at /etc/fabio/fabio.properties, or set FABIO_<KEY> variables
# (they override the file; flags after the image name override both). See docs/configuration.md.

# ---- build: a wheel of the router and of every dependency, pinned by constraints.txt
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY router ./router
COPY registry ./registry
COPY ui ./ui
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

# ---- run: the wheels installed into a venv, no compiler, no pip cache, not root
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/router/bin:$PATH
COPY --from=build /wheels /wheels
RUN python -m venv /opt/router \
    && /opt/router/bin/pip install --no-cache-dir --no-index --find-links /wheels consul-router \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin router
COPY deploy/fabio.properties /etc/fabio/fabio.properties
USER 10001
EXPOSE 9999 9998
# /health is 200 once the first routing table is loaded and 503 while shutting down; no curl in the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9998/health', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["consul-router", "-cfg", "/etc/fabio/fabio.properties"]
