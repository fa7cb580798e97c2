"""Forget a person: ``edgeproxy forget`` and ``POST {debug_path}/forget``.

Everything edgeproxy keeps about them goes: session state (the store), every spool / Redis
queue row in any state (pending, in flight, delivered, dead letters), the /debug privacy log;
and a deletion request per Amplitude project with a ``secret_key`` is queued for Amplitude's
User Privacy API (``amplitude_privacy_api``), delivered durably by the worker like any item.

A person is a user id (their devices are found in the store and the spool) or a device id
(the user ids it carried are found the same way). Amplitude deletes by user id or Amplitude
id only: a device that never carried a user id cannot be deleted there by edgeproxy, and the
report says so.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from edgeproxy import amplitude_privacy_api
from edgeproxy.delivery.records import SpoolItem
from edgeproxy.delivery.targets import DELETIONS, DeletionTarget, targets_for
from edgeproxy.sources import SourceTable

SESSION_SCAN = 100_000  # sessions searched for a user id


@dataclass
class ForgetReport:
    device_ids: list[str] = field(default_factory=list)
    user_ids: list[str] = field(default_factory=list)
    sessions: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    privacy_log: int = 0
    deletions: list[str] = field(default_factory=list)  # sources a deletion request was queued for
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"device_ids": self.device_ids, "user_ids": self.user_ids, "sessions": self.sessions,
                "rows": self.rows, "privacy_log": self.privacy_log, "amplitude_deletions": self.deletions,
                "notes": self.notes}

    def lines(self) -> list[str]:
        rows = ", ".join(f"{n} {state}" for state, n in sorted(self.rows.items())) or "none"
        out = [f"devices: {', '.join(self.device_ids) or 'none found'}",
               f"user ids: {', '.join(self.user_ids) or 'none found'}",
               f"session states deleted: {self.sessions}",
               f"spool rows deleted: {rows}"]
        if self.privacy_log:
            out.append(f"/debug privacy log entries deleted: {self.privacy_log}")
        if self.deletions:
            out.append(f"Amplitude deletion queued for {len(self.user_ids)} user id(s) in: {', '.join(self.deletions)}")
        return out + [f"note: {n}" for n in self.notes]


def deletion_targets(sources: SourceTable) -> list[DeletionTarget]:
    return [t for src in sources for t in targets_for(src) if isinstance(t, DeletionTarget)]


async def _linked(store: Any, spool: Any, user_id: str | None, device_id: str | None) -> tuple[set[str], set[str]]:
    """The person's devices and user ids, as the store and the spool know them."""
    devices = {device_id} if device_id else set()
    users = {user_id} if user_id else set()
    if user_id:
        devices.update(await spool.user_devices(user_id))
        devices.update(d for d, state in await store.list_sessions(query=user_id, limit=SESSION_SCAN)
                       if state.user_id == user_id)
    if device_id:
        state = await store.get(device_id)
        if state is not None and state.user_id:
            users.add(state.user_id)
        for row in await spool.events_for_session(device_id, limit=1000):
            item = row.get("item")
            if isinstance(item, dict) and isinstance(item.get("user_id"), str) and row.get("target", "amplitude") == "amplitude":
                users.add(item["user_id"])
    return devices, users


async def forget_person(*, user_id: str | None, device_id: str | None, store: Any, spool: Any,
                        sources: SourceTable, privacy_log: Any = None, memory_store_elsewhere: bool = False) -> ForgetReport:
    """Delete what is kept about the person and queue Amplitude's deletion; what was done."""
    if not user_id and not device_id:
        raise ValueError("give a user id or a device id")
    devices, users = await _linked(store, spool, user_id, device_id)
    report = ForgetReport(sorted(devices), sorted(users))
    report.sessions = await store.forget(sorted(devices))
    if memory_store_elsewhere:
        report.notes.append("sessions.store is \"memory\": the serving process holds the session state; "
                            "POST {debug_path}/forget there removes it (else it expires after sessions.timeout)")
    for uid in sorted(users):
        report.rows = _add(report.rows, await spool.forget(sorted(devices), uid))
    if not users:
        report.rows = await spool.forget(sorted(devices), None)
    if privacy_log is not None:
        report.privacy_log = privacy_log.forget(devices)
    targets = deletion_targets(sources)
    if users and targets:
        now = int(time.time() * 1000)
        await spool.append([SpoolItem(f"forget-{uuid.uuid4()}", amplitude_privacy_api.ENDPOINT,
                                      amplitude_privacy_api.deletion_item(uid), None, None, None, None, now,
                                      DELETIONS, t.source) for t in targets for uid in sorted(users)])
        report.deletions = [t.source for t in targets]
    elif users:
        report.notes.append("no Amplitude deletion queued: set amplitude.secret_key (and each source's) so "
                            "edgeproxy can call Amplitude's User Privacy API")
    else:
        report.notes.append("no user id is known for this device: Amplitude deletes by user id or Amplitude id "
                            "only; find the device in Amplitude's User Look-Up and delete it there")
    return report


def _add(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}
