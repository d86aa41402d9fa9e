"""The assembled router: configuration to running parts, worker processes, the command line. The top layer:
it imports everything else (registry, ui, listen, proxy), and nothing imports it."""
