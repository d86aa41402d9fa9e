# Consul for `make container-test`: the binary the test suite uses (scripts/get-consul.sh) on the local base,
# standing in for hashicorp/consul (same entrypoint shape: the compose file's `command` is consul's arguments).
ARG BASE
FROM ${BASE}
COPY consul /usr/bin/consul
ENTRYPOINT ["/usr/bin/consul"]
CMD ["agent", "-dev", "-client=0.0.0.0"]
