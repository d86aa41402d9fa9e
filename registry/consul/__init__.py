"""Consul as a route source: the HTTP API client, the watcher that long-polls the catalog, health judging,
self-registration and the no-route page. Produces route commands (router.table.routecmd) and nothing else."""
