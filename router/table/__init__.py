"""The routing table: route commands, table building, host/path lookup and pickers. Pure (no I/O); imports
only router.config."""
