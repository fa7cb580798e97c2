"""The spool's two threads: WAL flushes (what makes an append durable) and checkpoints.

Why threads for these alone: they wait on the disk, and the event loop must keep serving
meanwhile; the SQL itself stays on the loop (see spool_commit).
"""

from __future__ import annotations

import asyncio
import os
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Callable

CHECKPOINT_EVERY_S = 1.0  # the syncer copies the WAL into the database at most this often
# A WAL longer than this (pages) is checkpointed with RESTART: see Syncer._checkpoint.
WAL_RESTART_PAGES = 4096
CHECKPOINT_WAIT_S = 1.0  # a RESTART checkpoint waits this long for the loop's transaction to end


class Syncer:
    """The spool's two threads: one flushes the WAL to disk on request, one checkpoints it.

    ``request(seq)`` asks for a flush covering commit number ``seq``; requests that queue up
    while a flush runs are served by the next one (group flush). ``on_synced(seq, error)`` is
    called on the event loop afterwards. Checkpoints use a connection of their thread's own,
    at most every CHECKPOINT_EVERY_S and only after commits: PASSIVE, which never blocks the
    loop's writes, and RESTART when the WAL has grown long (see ``_checkpoint``).

    Why two threads: a checkpoint copies the WAL into the database and syncs it, 10-22 ms
    under ~1,000 tracking calls/s on the bench machine, once a second. When one thread did
    both, every call committed meanwhile waited for the whole checkpoint before its flush
    could start (the longest wait for a flush: 16-29 ms against an fdatasync of ~1 ms).
    """

    def __init__(self, db_path: Path, loop: asyncio.AbstractEventLoop,
                 on_synced: Callable[[int, BaseException | None], None]) -> None:
        self.dirty = False  # set by the loop after each commit; a checkpoint has work to do
        self.restarting = False  # a RESTART checkpoint wants the write lock: the loop holds back
        self._db_path = db_path
        self._loop = loop
        self._on_synced = on_synced
        self._requests: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        # The WAL exists once the connection has opened the database in WAL mode; it keeps its
        # inode while a connection is open (SQLite restarts it in place after a checkpoint).
        self._wal_fd = os.open(f"{db_path}-wal", os.O_RDONLY | os.O_CREAT, 0o644)
        self._threads = [
            threading.Thread(target=self._run_flushes, name="edgeproxy-spool-sync", daemon=True),
            threading.Thread(target=self._run_checkpoints, name="edgeproxy-spool-checkpoint", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def request(self, seq: int) -> None:
        self._requests.put(seq)

    def stop(self) -> None:
        """Serve the flushes already asked for, then end both threads (blocking: call off the loop)."""
        self._requests.put(None)
        self._stopping.set()
        for thread in self._threads:
            thread.join()
        os.close(self._wal_fd)

    def _run_flushes(self) -> None:
        while True:
            seq = self._requests.get()
            stop = seq is None
            while not stop:  # every request queued meanwhile is covered by this one flush
                try:
                    more = self._requests.get_nowait()
                except queue.Empty:
                    break
                stop = more is None
                seq = max(seq or 0, more or 0)
            if seq:
                try:
                    os.fdatasync(self._wal_fd)
                    error: BaseException | None = None
                except OSError as exc:
                    error = exc
                self._loop.call_soon_threadsafe(self._on_synced, seq, error)
            if stop:
                return

    def _run_checkpoints(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while not self._stopping.wait(CHECKPOINT_EVERY_S):
                if self.dirty:
                    self.dirty = False  # before the checkpoint: a commit made during it sets it again
                    conn = conn or sqlite3.connect(self._db_path, timeout=CHECKPOINT_WAIT_S)
                    self._checkpoint(conn)
        finally:
            if conn is not None:
                conn.close()

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """Copy the WAL into the database; restart the WAL when it has grown long.

        PASSIVE never holds up the loop's writes, but it only copies the frames committed
        before it began, and SQLite starts the WAL over only after a checkpoint that copied
        everything: under steady writes that rarely happens, and the WAL file grew without
        bound (76 MB in 24 s of saturating batch load). Past WAL_RESTART_PAGES a RESTART
        checkpoint takes the write lock while it copies; ``restarting`` tells the loop to
        hold its transactions back meanwhile (they wait as for any foreign lock, and the
        loop keeps serving), so the checkpoint gets the lock and the next write starts the
        WAL from its beginning.
        """
        try:
            busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames > WAL_RESTART_PAGES:
                self.restarting = True
                try:
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                finally:
                    self.restarting = False
            if busy or copied < frames:
                self.dirty = True  # not all copied: try again next time
        except sqlite3.Error:
            self.dirty = True  # busy now: the next one copies what this one did not
