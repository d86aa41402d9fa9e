"""Connections and protocols on the proxy port(s): they parse what clients send and hand each request to
router.proxy. Imports router.proxy and below."""
