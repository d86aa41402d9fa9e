# consul-router: the image its users run next to Consul and Registrator.
#   docker build -t consul-router .
#   docker run -p 9999:9999 -p 9998:9998 -e FABIO_REGISTRY_CONSUL_ADDR=consul:8500 consul-router
# Configuration: mount a fabio.properties at /etc/fabio/fabio.properties, or set FABIO_<KEY> variables
# (they override the file; flags after the image name override both). See docs/configuration.md.
#
# Build arguments (all optional; the defaults are what users get):
#   BASE        the final stage's base image: any Debian bookworm with python3 (3.11) and its venv module.
#   BUILD_BASE  the build stage's base, the same family as BASE (the venv built there is copied over).
#               `make container-test` points both at a base made locally with debootstrap.
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL  a package index mirror for the build stage.
#   VERSION, REVISION  written into the org.opencontainers.image labels.
# Built and run for real by `make container-test` (deploy/README.md has its figures).
ARG BASE=python:3.11-slim-bookworm
ARG BUILD_BASE=python:3.11-slim-bookworm

# ---- build: wheels pinned by constraints.txt, installed into the venv the final stage copies
FROM ${BUILD_BASE} AS build
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
# tini as PID 1 (see ENTRYPOINT), its static build, so the final stage needs no package manager run;
# binutils for `strip` below (build stage only); libnghttp2-14, the HTTP/2 engine (router/proxy/nghttp2.py),
# copied into the venv's lib/ where the router looks when the system has none (the final stage installs nothing).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini binutils libnghttp2-14 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY router ./router
COPY registry ./registry
COPY ui ./ui
# The venv lives at its final path so its scripts' #! lines stay right once copied; pip and setuptools
# leave it afterwards (the router does not need them at run time, and they are the usual CVE noise).
# The wheels' extension modules carry their symbol tables: stripped, uvloop's goes from 13.6 to 1.6 MB and
# the venv from 46 to 30 MB (make container-test imports every one of them from the final image).
RUN python3 -m venv /tmp/buildenv \
    && /tmp/buildenv/bin/pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt . \
    && python3 -m venv /opt/router \
    && /opt/router/bin/pip install --no-cache-dir --no-index --find-links /wheels consul-router \
    && /opt/router/bin/pip uninstall -y -q pip setuptools \
    && find /opt/router -name '*.so' -exec strip --strip-unneeded {} + \
    && cp -L /usr/lib/*-linux-gnu/libnghttp2.so.14 /opt/router/lib/

# ---- run: the base, the venv, tini; no compiler, no pip, no wheels, not root
FROM ${BASE}
# (a global ARG is visible inside a stage only when declared again)
ARG BASE
ARG VERSION=unknown
ARG REVISION=unknown
LABEL org.opencontainers.image.title="consul-router" \
      org.opencontainers.image.description="A Consul-driven dynamic HTTP router, a drop-in for fabio" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="${BASE}"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/router/bin:$PATH
RUN useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin router
COPY --from=build /usr/bin/tini-static /usr/bin/tini
COPY --from=build /opt/router /opt/router
COPY deploy/fabio.properties /etc/fabio/fabio.properties
USER 10001:10001
EXPOSE 9999 9998
# /health is 200 once the first routing table is loaded and 503 while shutting down; no curl in the image.
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9998/health', timeout=2)"]
# docker stop sends SIGTERM to tini, tini passes it to the router: /health turns 503, the proxy keeps
# serving for proxy.shutdownwait, in-flight requests finish, exit 0. tini also reaps the worker processes'
# orphans and makes a SIGTERM during start-up work (a bare Python PID 1 ignores it until its handler is set).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "consul-router", "-cfg", "/etc/fabio/fabio.properties"]
