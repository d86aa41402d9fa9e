"""Admin UI and API on ui.addr (default :9998)."""
