"""htpasswd files: the hash formats Apache's `htpasswd` writes, read once per file version.

Used by `proxy.auth` (router/proxy/auth.py) and by the admin UI's `ui.auth.htpasswd` (ui/security.py), so
one file works for both. Formats: bcrypt (`$2y$`, `$2a$`, `$2b$`, `htpasswd -B`), Apache MD5
(`$apr1$`, what `htpasswd` writes by default) and MD5-crypt (`$1$`), and `{SHA}` (`htpasswd -s`).
Plain-text and DES-crypt entries are refused: they are not safe to keep, and a line that is skipped is
logged with its file and line number, never guessed at.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging

import bcrypt

log = logging.getLogger("router.auth")

BCRYPT = ("$2y$", "$2a$", "$2b$")
SUPPORTED = (*BCRYPT, "$apr1$", "$1$", "{SHA}")
_ITOA64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def md5_crypt(password: bytes, salt: bytes, magic: bytes) -> str:
    """Poul-Henning Kamp's MD5-crypt; with magic `$apr1$` it is Apache's variant (the same algorithm)."""
    salt = salt[:8]
    alternate = hashlib.md5(password + salt + password).digest()  # noqa: S324 - the format is MD5 by definition
    ctx = password + magic + salt
    for i in range(len(password), 0, -16):
        ctx += alternate[:min(16, i)]
    i = len(password)
    while i:
        ctx += b"\0" if i & 1 else password[:1]
        i >>= 1
    final = hashlib.md5(ctx).digest()  # noqa: S324
    for r in range(1000):  # the fixed stretching rounds of the format
        step = password if r & 1 else final
        if r % 3:
            step += salt
        if r % 7:
            step += password
        step += final if r & 1 else password
        final = hashlib.md5(step).digest()  # noqa: S324
    out = []
    for a, b, c in ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)):
        v = final[a] << 16 | final[b] << 8 | final[c]
        out += [_ITOA64[(v >> s) & 0x3F] for s in (0, 6, 12, 18)]
    out += [_ITOA64[(final[11] >> s) & 0x3F] for s in (0, 6)]
    return f"{magic.decode()}{salt.decode('latin-1')}${''.join(out)}"


def check(stored: str, password: str) -> bool:
    """Whether `password` matches the stored hash (constant-time compare where we compute the hash)."""
    pw = password.encode()
    if stored.startswith(BCRYPT):
        try:
            return bcrypt.checkpw(pw, stored.encode())
        except ValueError:
            return False
    for magic in ("$apr1$", "$1$"):
        if stored.startswith(magic):
            salt = stored[len(magic):].split("$", 1)[0].encode("latin-1")
            return hmac.compare_digest(md5_crypt(pw, salt, magic.encode()), stored)
    if stored.startswith("{SHA}"):
        digest = "{SHA}" + base64.b64encode(hashlib.sha1(pw).digest()).decode()  # noqa: S324 - htpasswd -s
        return hmac.compare_digest(digest, stored)
    return False


def read(path: str) -> dict[str, str]:
    """user -> hash for the formats we can check; other lines are logged (file and line) and skipped."""
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep:
                log.warning("%s:%d: not user:hash; skipped", path, n)
                continue
            if not stored.startswith(SUPPORTED):
                log.warning("%s:%d: user %s: unsupported hash (bcrypt, $apr1$, $1$ and {SHA} are); skipped",
                            path, n, user)
                continue
            users[user] = stored
    return users
