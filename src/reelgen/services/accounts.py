"""API keys: created once, shown once, stored only as a hash."""

from __future__ import annotations

import hashlib
import secrets

from reelgen.domain.errors import InvalidRequest, Unauthorized
from reelgen.domain.jobs import Tier, User
from reelgen.platform import ApiContext

KEY_PREFIX = "rg_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def create_key(
    platform: ApiContext,
    *,
    user_name: str,
    tier: Tier | None,
    key: str | None = None,
    allow_batch: bool = True,
    admin: bool = False,
    likeness_consent: bool = False,
    age_verified: bool = False,
) -> str:
    """Creates (or reuses) the user and binds a new key to it; returns the plain key.

    `tier=None` keeps an existing user's tier (a new user starts free). `allow_batch`: whether
    the key's requests may ask for the batch tier. `admin`: the key may also review held
    jobs (a role, whatever the user's tier). `likeness_consent`: the operator has the
    consent of the real people this key's users depict on record. `age_verified`: the operator
    verified that this key's users are adults."""
    if tier is Tier.BATCH:
        raise InvalidRequest(
            "batch is a job's service tier, not a user's: a user is paid or free.", param="tier"
        )
    now = platform.clock()
    user = platform.accounts.get_or_create_user(
        user_id=new_id("user"), name=user_name, tier=tier, now=now
    )
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    platform.accounts.add_key(
        key_id=new_id("key"),
        user_id=user.id,
        key_hash=hash_key(key),
        prefix=key[:8],
        now=now,
        allow_batch=allow_batch,
        role="admin" if admin else "user",
        likeness_consent=likeness_consent,
        age_verified=age_verified,
    )
    return key


def cached_user(platform: ApiContext, key: str | None) -> User | None:
    """The key's user if the cache knows it (no I/O); None means: `authenticate`."""
    if not key:
        raise Unauthorized(
            "Missing API key: send it as 'Authorization: Bearer KEY'.", code="missing_api_key"
        )
    return platform.key_cache.get(hash_key(key), platform.clock())


def authenticate(platform: ApiContext, key: str | None) -> User:
    """Resolves a key to its user; answers are cached briefly so each request skips a query."""
    user = cached_user(platform, key)
    if user is None:
        assert key is not None  # `cached_user` refused it otherwise
        digest = hash_key(key)
        user = platform.accounts.user_for_key(digest)
        if user is None:
            raise Unauthorized("Invalid API key.")
        platform.key_cache.put(digest, user, platform.clock())
    return user


def ensure_bootstrap_key(platform: ApiContext, *, create_if_empty: bool) -> str | None:
    """Makes the configured bootstrap key exist, or creates a first key on an empty install.

    Returns a key only when one was newly generated and must be shown to the operator.
    """
    configured = platform.settings.bootstrap_api_key
    if configured is not None:
        create_key(platform, user_name="admin", tier=Tier.PAID, key=configured.get_secret_value())
        return None
    if create_if_empty and platform.accounts.count_keys() == 0:
        return create_key(platform, user_name="admin", tier=Tier.PAID)
    return None
