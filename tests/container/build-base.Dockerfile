# The build stage's base for `make container-test`: the local base plus this machine's CA bundle, so pip in
# the build reaches the package index the way the machine's own pip does (its config names that bundle).
# Only the build stage uses it: the final image is made FROM the plain local base.
ARG BASE
FROM ${BASE}
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
