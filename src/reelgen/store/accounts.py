"""Users and API keys."""

from __future__ import annotations

from sqlalchemy import select, update

from reelgen.domain.jobs import Tier, User
from reelgen.store import queries as q
from reelgen.store.database import Database
from reelgen.store.schema import api_keys, users


class AccountStore:
    def __init__(self, db: Database):
        self.db = db

    def get_or_create_user(self, *, user_id: str, name: str, tier: Tier | None, now: float) -> User:
        """A new user gets `tier` (free if None); an existing one keeps its tier unless `tier`
        is given. Safe when several processes create the same user at once."""
        with self.db.write() as conn:
            conn.execute(
                self.db.backend.insert_ignoring_conflicts(users).values(
                    id=user_id, name=name, tier=(tier or Tier.FREE).value, created_at=now
                )
            )
            row = conn.execute(select(users).where(users.c.name == name)).one()
            if tier is not None and row.tier != tier.value:
                conn.execute(update(users).where(users.c.id == row.id).values(tier=tier.value))
                return User(id=row.id, name=row.name, tier=tier)
            return User(id=row.id, name=row.name, tier=Tier(row.tier))

    def add_key(
        self,
        *,
        key_id: str,
        user_id: str,
        key_hash: str,
        prefix: str,
        now: float,
        allow_batch: bool = True,
        role: str = "user",
        likeness_consent: bool = False,
        age_verified: bool = False,
    ) -> None:
        """Adding a key that exists already is a no-op (replicas bootstrapping at once)."""
        with self.db.write() as conn:
            conn.execute(
                self.db.backend.insert_ignoring_conflicts(api_keys).values(
                    id=key_id,
                    user_id=user_id,
                    key_hash=key_hash,
                    prefix=prefix,
                    created_at=now,
                    allow_batch=allow_batch,
                    role=role,
                    likeness_consent=likeness_consent,
                    age_verified=age_verified,
                )
            )

    def count_keys(self) -> int:
        with self.db.read() as conn:
            return len(conn.execute(select(api_keys.c.id).limit(1)).all())

    def user_for_key(self, key_hash: str) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(q.user_for_key(), {"key_hash": key_hash}).first()
        if row is None:
            return None
        return User(
            id=row.id,
            name=row.name,
            tier=Tier(row.tier),
            allow_batch=row.allow_batch,
            admin=row.role == "admin",
            likeness_consent=row.likeness_consent,
            age_verified=row.age_verified,
        )
