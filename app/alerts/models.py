"""Alert state shared by every replica: fixed-window counters and the last firing per rule and key.

Platform-level operational state, not tenant data: no `tenant_id` column (a per-tenant rule puts the
tenant id inside its key), so no row level security. The app role may SELECT, INSERT and UPDATE
both, and DELETE old counter windows; nothing else.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base


class AlertCounter(Base):
    __tablename__ = "alert_counters"
    # Serves the pruning of old windows.
    __table_args__ = (Index("ix_alert_counters_window_start", "window_start"),)

    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)


class AlertFiring(Base):
    __tablename__ = "alert_firings"

    rule: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(256), primary_key=True)
    # '-infinity' after a firing that could not be delivered: the next observation may fire again.
    fired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
