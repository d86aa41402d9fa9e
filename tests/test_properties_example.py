"""fabio.properties.example documents every supported key and still loads."""

from __future__ import annotations

from pathlib import Path

from router.config.keys import KEYS
from router.config.settings import load, read_properties
from scripts.gen_properties_example import render

ROOT = Path(__file__).resolve().parent.parent


def test_example_is_generated_from_the_keys() -> None:
    text = (ROOT / "fabio.properties.example").read_text()
    assert text == render(), "run: python scripts/gen_properties_example.py"
    for key in KEYS:
        assert f"# {key.name} = {key.default}" in text


def test_uncommented_example_loads_with_defaults() -> None:
    text = (ROOT / "fabio.properties.example").read_text()
    lines = [line[2:] for line in text.splitlines() if line.startswith("# ") and " = " in line and "." in line]
    cfg = load([], env={}, properties=read_properties("\n".join(lines)))
    assert cfg.warnings == ()
    assert cfg["proxy.addr"] == ("0.0.0.0", 9999)
