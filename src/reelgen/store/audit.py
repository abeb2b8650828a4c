"""The moderation audit log: one row per safety verdict."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from reelgen.store import queries as q
from reelgen.store.database import Database
from reelgen.store.schema import moderation_audit


class AuditStore:
    def __init__(self, db: Database):
        self.db = db

    def record(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            with self.db.write() as conn:
                conn.execute(q.insert_audit(), list(rows))

    def for_job(self, job_id: str) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            result = conn.execute(
                select(moderation_audit)
                .where(moderation_audit.c.job_id == job_id)
                .order_by(moderation_audit.c.id)
            )
            return [dict(row._mapping) for row in result]

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            result = conn.execute(
                select(moderation_audit).order_by(moderation_audit.c.id.desc()).limit(limit)
            )
            return [dict(row._mapping) for row in result]

    def quarantined_before(self, before: float, limit: int = 100) -> list[tuple[int, str]]:
        """(entry id, key) of quarantined outputs blocked before `before`."""
        with self.db.read() as conn:
            rows = conn.execute(
                select(moderation_audit.c.id, moderation_audit.c.quarantine_key)
                .where(
                    moderation_audit.c.at < before,
                    moderation_audit.c.quarantine_key.is_not(None),
                )
                .limit(limit)
            )
            return [(int(r.id), str(r.quarantine_key)) for r in rows]

    def quarantine_deleted(self, entry_id: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                update(moderation_audit)
                .where(moderation_audit.c.id == entry_id)
                .values(quarantine_key=None)
            )

    def forget_prompts(self, before: float) -> int:
        """Clears the prompt text of entries older than `before` (the hash stays)."""
        with self.db.write() as conn:
            result = conn.execute(
                update(moderation_audit)
                .where(moderation_audit.c.at < before, moderation_audit.c.prompt.is_not(None))
                .values(prompt=None)
            )
            return int(result.rowcount or 0)
