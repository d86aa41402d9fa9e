"""Service discovery: Consul (and static/file) sources that produce route commands."""
