"""Secrets at rest: the secret fields of policy objects are stored AES-256-GCM encrypted.

What is secret is declared by the policy model (``secret_fields``: an API key's ``key``, a
certificate's private ``key``). The store keeps those fields out of the clear ``spec`` column
and writes them, as one JSON object, to the ``secret`` column, encrypted with the newest key
of a key ring; ``secret_key_id`` names that key. The object's kind and name are the AEAD's
associated data, so a ciphertext moved to another row does not decrypt.

Where the keys come from, first match wins:

1. ``GATEWAY_SECRET_KEY``: base64-encoded 32-byte keys separated by commas or whitespace;
2. ``GATEWAY_SECRET_KEY_FILE``: a file of such keys, one a line (``#`` comments);
3. for a SQLite file, ``<database>.keys`` next to it, created mode 0600 the first time a
   secret is written (a copy of both files together is not protected by it);
4. nothing else: PostgreSQL has no default, so several controllers never encrypt with
   different keys by accident.

The last key listed encrypts; every key listed decrypts (rotation: add a key, run
``gatewayctl secrets rotate``, retire the old one). A key's id is a digest of it, so ids
say which key a row needs without revealing anything about the key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StoreError

if TYPE_CHECKING:  # imported on first use: a store without secrets never loads it
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "ENV_KEY",
    "ENV_KEY_FILE",
    "KeyRing",
    "Sealed",
    "SecretKeyError",
    "SecretKeys",
    "default_key_file",
    "format_key",
    "key_id",
    "new_key",
    "write_private_file",
]

ENV_KEY = "GATEWAY_SECRET_KEY"
ENV_KEY_FILE = "GATEWAY_SECRET_KEY_FILE"
KEY_BYTES = 32
#: the ciphertext format: "v1." + base64url(12-byte nonce + AES-256-GCM ciphertext and tag)
_VERSION = "v1."
_AAD_PREFIX = b"gatewayctl secret v1\x00"
_SPLIT = re.compile(r"[\s,]+")
_FILE_HEADER = (
    "# gatewayctl secret keys (base64, 32 bytes each). The last key encrypts; all decrypt.\n"
    "# Keep this file apart from database backups: together they reveal every secret.\n"
)


class SecretKeyError(StoreError):
    """A secret key is missing, malformed or wrong (one line, names what is missing)."""


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def format_key(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def key_id(key: bytes) -> str:
    """A public name for a key: 12 hex digits of a digest, revealing nothing of the key."""
    return hashlib.sha256(b"gatewayctl key id\x00" + key).hexdigest()[:12]


def default_key_file(db_path: str | Path) -> Path:
    return Path(str(db_path) + ".keys")


def _parse_keys(text: str, source: str) -> list[bytes]:
    keys = []
    entries = [
        e for line in text.splitlines() for e in _SPLIT.split(line.split("#", 1)[0]) if e.strip()
    ]
    for i, entry in enumerate(entries, 1):
        bare = entry.rstrip("=").replace("-", "+").replace("_", "/")  # either alphabet
        try:
            key = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != KEY_BYTES:
            raise SecretKeyError(
                f"{source}: key {i} is not a base64-encoded {KEY_BYTES}-byte key "
                "(make one with: gatewayctl secrets generate-key)"
            )
        keys.append(key)
    return keys


def write_private_file(path: str | Path, data: str | bytes) -> None:
    """Write a file only its owner can read (mode 0600, whatever the umask).

    A regular file (or a new one) is replaced atomically by a new file created 0600, so
    neither an old, wider mode nor a reader holding the old file open sees the content.
    Anything else (``/dev/stdout``, a pipe) is written in place.
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    if target.exists() and not target.is_file():
        with open(target, "wb") as out:
            out.write(raw)
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class KeyRing:
    """Keys by id in the order given; the last one encrypts."""

    keys: dict[str, bytes]
    source: str
    _aeads: dict[str, AESGCM] = field(default_factory=dict, repr=False, compare=False)

    @property
    def current_id(self) -> str:
        return next(reversed(self.keys))

    def aead(self, kid: str) -> AESGCM:
        """The cipher of one key, made once (loading thousands of rows reuses it)."""
        cipher = self._aeads.get(kid)
        if cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            cipher = self._aeads[kid] = AESGCM(self.keys[kid])
        return cipher


@dataclass(frozen=True)
class Sealed:
    """The encrypted part of one row."""

    key_id: str
    blob: str


def _aad(kind: str, name: str) -> bytes:
    return _AAD_PREFIX + kind.encode() + b"\x00" + name.encode()


class SecretKeys:
    """The key ring of one database, read when a secret is first sealed or opened.

    A key file is read again when a row names a key it lacked, so a controller keeps up
    with a key added by ``gatewayctl secrets rotate`` on the same host without a restart.
    """

    def __init__(
        self,
        *,
        env_key: str | None = None,
        key_file: str | None = None,
        default_file: Path | None = None,
        ephemeral: bool = False,
    ) -> None:
        self.env_key = env_key or None
        self.key_file = Path(key_file).expanduser() if key_file else None
        self.default_file = default_file
        self.ephemeral = ephemeral
        self._ring: KeyRing | None = None

    @classmethod
    def for_database(cls, database: str | None, sqlite: bool) -> SecretKeys:
        """The configured keys (environment) for a database URL's file (None: no file)."""
        in_memory = not database or database == ":memory:"
        return cls(
            env_key=os.environ.get(ENV_KEY),
            key_file=os.environ.get(ENV_KEY_FILE),
            default_file=default_key_file(database)
            if sqlite and database and not in_memory
            else None,
            ephemeral=sqlite and in_memory,
        )

    # -- where the keys are ---------------------------------------------------------------

    @property
    def source(self) -> str:
        if self.env_key:
            return ENV_KEY
        if self.key_file is not None:
            return f"{ENV_KEY_FILE}={self.key_file}"
        if self.default_file is not None:
            return str(self.default_file)
        return "an in-memory key" if self.ephemeral else "no key source"

    @property
    def writable_file(self) -> Path | None:
        """The key file ``rotate`` may add keys to (None when keys come from the environment)."""
        if self.env_key:
            return None
        return self.key_file or self.default_file

    def _read(self) -> KeyRing | None:
        """The keys as configured now; None when there is no key yet (nothing to read)."""
        if self.env_key:
            keys = _parse_keys(self.env_key, ENV_KEY)
            if not keys:
                raise SecretKeyError(f"{ENV_KEY} is set but holds no key")
        elif self.key_file is not None or self.default_file is not None:
            path = self.key_file or self.default_file
            assert path is not None
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                if self.key_file is not None:
                    raise SecretKeyError(f"{self.source}: no such file") from None
                return None
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not a text file"
                raise SecretKeyError(f"secret key file {path}: cannot read: {reason}") from None
            keys = _parse_keys(text, f"secret key file {path}")
            if not keys:
                raise SecretKeyError(f"secret key file {path} holds no key")
        elif self.ephemeral:
            keys = [new_key()]
        else:
            return None
        return KeyRing({key_id(k): k for k in keys}, self.source)

    def ring(self, *, create: bool = False) -> KeyRing:
        """The key ring; with ``create``, a default key file is made when there is none."""
        if self._ring is None:
            self._ring = self._read()
        if self._ring is None and create and self.default_file is not None:
            self._create_default()
            self._ring = self._read()
        if self._ring is None:
            raise SecretKeyError(self.missing())
        return self._ring

    def missing(self) -> str:
        if self.default_file is not None:
            return (
                f"no secret key: {self.default_file} does not exist "
                f"(restore it, or set {ENV_KEY_FILE} or {ENV_KEY})"
            )
        return (
            f"no secret key: set {ENV_KEY} or {ENV_KEY_FILE} "
            "(a PostgreSQL database has no default key file; every controller needs the same keys)"
        )

    def _create_default(self) -> None:
        path = self.default_file
        assert path is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:  # mkstemp: mode 0600
                out.write(_FILE_HEADER + format_key(new_key()) + "\n")
                out.flush()
                os.fsync(out.fileno())
            # a hard link appears whole or not at all, and never replaces a file: of two
            # processes creating the key at once, both end up with the first one's key
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)

    def for_dry_run(self) -> SecretKeys:
        """The keys a dry run seals with: these, or, where sealing would first create the
        default key file, a throwaway in-memory key (a dry run writes nothing, and what it
        sealed is rolled back). Errors a real write would meet (a bad key file, no key
        source at all) are raised the same."""
        if self._ring is None:
            self._ring = self._read()
        if self._ring is None and self.default_file is not None:
            return SecretKeys(ephemeral=True)
        return self

    def reload(self) -> KeyRing:
        self._ring = None
        return self.ring()

    def add_key(self, key: bytes) -> KeyRing:
        """Append ``key`` to the key file (it becomes the one that encrypts)."""
        path = self.writable_file
        if path is None:
            raise SecretKeyError(
                f"keys come from {ENV_KEY}: add a new key there (last), restart, then run "
                "gatewayctl secrets rotate --no-new-key"
            )
        try:
            old = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old = _FILE_HEADER
        if old and not old.endswith("\n"):
            old += "\n"
        write_private_file(path, old + format_key(key) + "\n")
        return self.reload()

    def retire_keys(self, keep: str) -> list[str]:
        """Remove every key but ``keep`` from the key file; the ids removed."""
        path = self.writable_file
        ring = self.ring()
        if path is None:
            raise SecretKeyError(f"keys come from {ENV_KEY}: remove the old keys there")
        retired = [kid for kid in ring.keys if kid != keep]
        lines = [
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if not line.split("#", 1)[0].strip()
            or all(key_id(k) == keep for k in _parse_keys(line, str(path)))
        ]
        write_private_file(path, "\n".join(lines) + "\n")
        self.reload()
        return retired

    # -- sealing --------------------------------------------------------------------------

    def seal(self, kind: str, name: str, fields: dict[str, Any]) -> Sealed:
        ring = self.ring(create=True)
        kid = ring.current_id
        nonce = secrets.token_bytes(12)
        plain = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
        ct = ring.aead(kid).encrypt(nonce, plain, _aad(kind, name))
        return Sealed(kid, _VERSION + base64.urlsafe_b64encode(nonce + ct).decode())

    def open(self, kind: str, name: str, sealed: Sealed) -> dict[str, Any]:
        from cryptography.exceptions import InvalidTag

        what = f"{kind} {name!r}"
        ring = self._ring_with(sealed.key_id, what)
        if not sealed.blob.startswith(_VERSION):
            raise SecretKeyError(f"{what}: secret: unknown format {sealed.blob[:3]!r}")
        try:
            raw = base64.urlsafe_b64decode(sealed.blob[len(_VERSION) :])
            plain = ring.aead(sealed.key_id).decrypt(raw[:12], raw[12:], _aad(kind, name))
            data = json.loads(plain)
        except (InvalidTag, binascii.Error, ValueError):
            raise SecretKeyError(
                f"{what}: secret does not decrypt with key {sealed.key_id} "
                "(the row was altered or copied from another object)"
            ) from None
        if not isinstance(data, dict):
            raise SecretKeyError(f"{what}: secret: not an object")
        return data

    def _ring_with(self, kid: str, what: str) -> KeyRing:
        try:
            ring = self.ring()
        except SecretKeyError as exc:
            raise SecretKeyError(f"{what}: cannot decrypt: {exc}") from None
        if kid not in ring.keys:
            ring = self.reload() if self.writable_file is not None else ring
        if kid not in ring.keys:
            raise SecretKeyError(
                f"{what}: encrypted with secret key {kid}, which {ring.source} does not have "
                f"(it has {', '.join(ring.keys)})"
            )
        return ring

    def check_known(self, key_ids: set[str]) -> None:
        """Refuse to encrypt new secrets when the database holds some this ring cannot
        read: mixing keys would leave a database no single key set opens."""
        if not key_ids:
            return
        ring = self.ring(create=False) if self._has_keys() else None
        if ring is None:
            raise SecretKeyError(
                f"the database holds secrets encrypted with key {', '.join(sorted(key_ids))}, "
                f"but {self.missing().removeprefix('no secret key: ')}"
            )
        unknown = key_ids - set(ring.keys)
        if unknown and self.writable_file is not None:
            ring = self.reload()
            unknown = key_ids - set(ring.keys)
        if unknown:
            raise SecretKeyError(
                f"the database holds secrets encrypted with key {', '.join(sorted(unknown))}, "
                f"which {ring.source} does not have"
            )

    def _has_keys(self) -> bool:
        try:
            self.ring()
        except SecretKeyError:
            if self._ring is None and self.env_key is None and self.key_file is None:
                return False
            raise
        return True
