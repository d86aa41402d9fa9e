"""One request's journey: guard, lookup, auth, headers, upstream pool, redirects, WebSocket, access log and
stats. Imports router.table and router.config, never the listener or the running router."""
