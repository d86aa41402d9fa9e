"""Certificate sources for TLS listeners (`proxy.cs`) and the per-handshake choice of a certificate."""
