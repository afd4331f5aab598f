"""Project keys: a public ingest key for pages, a secret read key shown once and stored hashed."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

PUBLIC_KEY_PREFIX = "pk_"
SECRET_KEY_PREFIX = "sk_"


@dataclass(frozen=True)
class NewProjectKeys:
    public_key: str
    secret_key: str

    @property
    def secret_key_hash(self) -> str:
        return hash_secret_key(self.secret_key)


def generate_project_keys() -> NewProjectKeys:
    return NewProjectKeys(
        public_key=PUBLIC_KEY_PREFIX + secrets.token_urlsafe(16),
        secret_key=SECRET_KEY_PREFIX + secrets.token_urlsafe(32),
    )


def hash_secret_key(secret_key: str) -> str:
    # The key is 256 random bits, so a fast unsalted hash is enough to make a stolen
    # database useless for reading, and it lets a request find its project by hash.
    return hashlib.sha256(secret_key.encode()).hexdigest()
