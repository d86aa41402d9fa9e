"""Configuration: fabio's keys, their defaults, parsing and precedence. The bottom layer: imports nothing of ours."""
