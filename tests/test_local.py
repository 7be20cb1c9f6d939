"""LocalBackend in one process: damaged files, a reboot, permissions, fork, conflicts, what
it refuses, and two backends standing for two processes."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import gc
import logging
import os
import stat
import struct
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

import allotment
from allotment.local import _directory, _state_file
from allotment.local._layout import HEADER_WORDS, copy_words
from allotment.testing import ManualClock
from support import GENEROUS, Worker, wait_until


def _backend(tmp_path: Path, **options: int) -> allotment.LocalBackend:
    return allotment.LocalBackend(tmp_path / "limits", **options)


def _manager_file(backend: allotment.LocalBackend, name: str) -> str:
    return backend._files[name].path


def _copy_offset(index: int) -> int:
    return 8 * (HEADER_WORDS + index * copy_words(1))


def _generation(path: str, index: int) -> int:
    with open(path, "rb") as file:
        file.seek(_copy_offset(index))
        return int(struct.unpack("<q", file.read(8))[0])


def _damage(path: str, index: int) -> None:
    """Flip a byte in the payload of copy ``index`` (what a writer killed mid-write leaves)."""
    with open(path, "r+b") as file:
        file.seek(_copy_offset(index) + 8 * 3 + 8)
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))


def test_a_torn_newest_copy_is_never_read_the_previous_state_stands(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(3, name="torn", backend=backend)
        lease = pool.acquire(2)
        path = _manager_file(backend, "torn")
        newest = 0 if _generation(path, 0) > _generation(path, 1) else 1
        _damage(path, newest)  # the acquire's write, torn: as if it never happened
        assert pool.statistics().available == 3
        with pool.acquire(3) as again:
            assert again.fencing_token is not None
        lease.release()  # its record is gone with the torn copy: nothing to give back
        assert pool.statistics().available == 3
    finally:
        backend.close()


def test_a_file_damaged_in_both_copies_is_refused_never_trusted(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(3, name="broken", backend=backend)
        pool.acquire(1).release()
        path = _manager_file(backend, "broken")
        _damage(path, 0)
        _damage(path, 1)
        with pytest.raises(allotment.BackendUnavailable, match=r"damaged.*checksum"):
            pool.try_acquire(1)
    finally:
        backend.close()


def test_a_truncated_file_is_refused(tmp_path: Path) -> None:
    first = _backend(tmp_path)
    try:
        allotment.ResourceManager(3, name="short", backend=first).acquire(1).release()
        path = _manager_file(first, "short")
    finally:
        first.close()
    os.truncate(path, 100)
    second = _backend(tmp_path)
    try:
        with pytest.raises(allotment.BackendUnavailable, match=r"damaged.*size"):
            allotment.ResourceManager(3, name="short", backend=second)
    finally:
        second.close()


def test_a_directory_from_before_a_reboot_starts_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _backend(tmp_path)
    pool = allotment.ResourceManager(2, name="gpus", backend=before)
    lease = pool.acquire(2)
    token = lease.fencing_token
    assert token is not None
    # A new boot: the holder's process (and its liveness lock) would be gone; here it is
    # not, so only the boot id can tell the state is stale.
    monkeypatch.setattr(_directory, "boot_id", lambda: "another-boot")
    after = _backend(tmp_path)
    try:
        fresh = allotment.ResourceManager(2, name="gpus", backend=after)
        with fresh.acquire(2) as again:
            assert again.fencing_token is not None
            assert again.fencing_token > token  # the first token of a file is the wall clock
    finally:
        after.close()
        lease.release()
        before.close()


def test_the_directory_is_private_and_its_files_too(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        allotment.ResourceManager(1, name="private", backend=backend)
        root = tmp_path / "limits"
        assert stat.S_IMODE(root.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(_manager_file(backend, "private")).stat().st_mode) == 0o600
    finally:
        backend.close()


def test_a_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "open"
    root.mkdir()
    root.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by every user"):
        allotment.LocalBackend(root)
    root.chmod(0o770)
    with pytest.raises(PermissionError, match="writable by its group"):
        allotment.LocalBackend(root)
    allotment.LocalBackend(root, mode=0o770).close()  # a group, on purpose
    with pytest.raises(PermissionError, match="every user"):
        allotment.LocalBackend(tmp_path / "other", mode=0o777)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        allotment.ResourceManager(1, name="owned", backend=backend)
        path = _manager_file(backend, "owned")
    finally:
        backend.close()
    os.chown(path, 12345, 12345)
    again = _backend(tmp_path)
    try:
        with pytest.raises(PermissionError, match="owned by another user"):
            allotment.ResourceManager(1, name="owned", backend=again)
    finally:
        again.close()


def test_a_symbolic_link_in_place_of_a_file_is_refused(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        target = tmp_path / "elsewhere"
        target.write_bytes(b"")
        path = backend._directory.manager_path("linked")
        os.symlink(target, path)
        with pytest.raises(OSError, match=r"Too many levels|symbolic"):
            allotment.ResourceManager(1, name="linked", backend=backend)
    finally:
        backend.close()


def test_a_conflicting_declaration_is_refused(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        allotment.ResourceManager({"gpu": 2}, name="declared", backend=backend)
        with pytest.raises(allotment.BackendConflict, match="declared with resources"):
            allotment.ResourceManager({"gpu": 3}, name="declared", backend=backend)
        with pytest.raises(allotment.BackendConflict, match="resource"):
            allotment.ResourceManager({"gpu": 2, "ram": 1}, name="declared", backend=backend)
        allotment.RateLimiter(10, per=1, name="declared-rate", backend=backend)
        with pytest.raises(allotment.BackendConflict, match="10 per 1 s"):
            allotment.RateLimiter(20, per=1, name="declared-rate", backend=backend)
    finally:
        backend.close()


def test_what_the_backend_cannot_do_is_refused_at_construction(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        with pytest.raises(allotment.UnsupportedByBackend):
            allotment.ResourceManager(2, name="banker", backend=backend, banker=True)
        with pytest.raises(allotment.UnsupportedByBackend):
            allotment.RateLimiter(1, name="clocked", backend=backend, clock=ManualClock())
        with pytest.raises(TypeError, match="needs a name"):
            allotment.ResourceManager(2, backend=backend)
        for semaphore in (allotment.Semaphore, allotment.BoundedSemaphore):
            with pytest.raises(allotment.UnsupportedByBackend):
                semaphore(2, backend=backend)
    finally:
        backend.close()


def test_two_backends_are_two_processes_and_count_each_other(tmp_path: Path) -> None:
    first, second = _backend(tmp_path), _backend(tmp_path)
    try:
        one = allotment.ResourceManager(3, name="shared", backend=first)
        two = allotment.ResourceManager(3, name="shared", backend=second)
        held = one.acquire(2)
        assert two.try_acquire(2) is None
        stats = two.statistics()
        assert stats.available == 1
        assert stats.other_holders == 1
        granted = threading.Event()

        def wait() -> None:
            with two.acquire(3, timeout=30):
                granted.set()

        waiter = threading.Thread(target=wait)
        waiter.start()
        while one.statistics().other_waiters != 1:
            pass
        held.release()  # rings the other backend's doorbell
        waiter.join(30)
        assert granted.is_set()
    finally:
        first.close()
        second.close()


def test_a_closed_backend_gives_back_what_it_held(tmp_path: Path) -> None:
    first, second = _backend(tmp_path), _backend(tmp_path)
    try:
        held = allotment.ResourceManager(2, name="closing", backend=first).acquire(2)
        other = allotment.ResourceManager(2, name="closing", backend=second)
        assert other.try_acquire(1) is None
        first.close()
        lease = other.try_acquire(2)
        assert lease is not None
        lease.release()
        with pytest.raises(allotment.UnsupportedByBackend, match="closed"):
            allotment.ResourceManager(2, name="closing", backend=first)
        held.release()  # its record went with the backend: nothing left to give back
    finally:
        second.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_has_its_own_identity_and_its_death_is_reclaimed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(3, name="forked", backend=backend)
        parent_lease = pool.acquire(1)
        parent = backend.me()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: takes 2 and dies holding them
            code = 1
            try:
                lease = pool.try_acquire(2)
                ok = lease is not None and backend.me() != parent and pool.try_acquire(1) is None
                parent_lease.release()  # the parent's: not the child's to give back
                code = 0 if ok else 2
            finally:
                os.write(write, bytes([code]))
                os._exit(code)
        os.close(write)
        assert os.read(read, 1) == b"\x00"
        os.close(read)
        os.waitpid(pid, 0)
        assert backend.me() == parent
        assert parent_lease.amounts == 1  # the child's release did not touch it
        with caplog.at_level(logging.WARNING, logger="allotment.local"):
            lease = pool.try_acquire(2)  # the dead child's 2 units come back at once
        assert lease is not None
        assert f"of process {pid}, which is gone" in caplog.text
        lease.release()
        parent_lease.release()
        assert pool.statistics().available == 3
    finally:
        backend.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX only")
def test_the_unsupported_platform_stub_refuses_clearly() -> None:
    from allotment.local._unsupported import LocalBackend

    with pytest.raises(allotment.UnsupportedByBackend, match="POSIX"):
        LocalBackend("/nowhere")


def test_a_lease_finalized_inside_a_section_is_released_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(2, name="reentered", backend=backend)

        def leak() -> None:
            cycle: list[object] = [pool.acquire(1)]
            cycle.append(cycle)  # garbage only the collector frees

        writes: list[int] = []
        original = _state_file.write_state  # type: ignore[attr-defined]

        def write_then_collect(*args: Any) -> None:
            original(*args)
            writes.append(1)
            gc.collect()  # the leaked lease's finalizer runs here, inside the section

        gc.disable()
        try:
            leak()
            monkeypatch.setattr(_state_file, "write_state", write_then_collect)
            with pytest.warns(allotment.LeakedLeaseWarning):
                pool.acquire(1).release()
            monkeypatch.undo()
        finally:
            gc.enable()
        assert writes
        assert pool.statistics().available == 2
    finally:
        backend.close()


def test_the_record_limit_is_refused_precisely_before_anything_changes(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(2000, name="many", backend=backend)
        leases = [pool.try_acquire(1) for _ in range(1024)]
        assert all(lease is not None for lease in leases)
        with pytest.raises(allotment.BackendLimitExceeded, match="1024"):
            pool.try_acquire(1)
        with pytest.raises(allotment.BackendLimitExceeded, match="1024"):
            pool.acquire(1, timeout=1)
        assert pool.statistics().available == 2000 - 1024
        for lease in leases:
            assert lease is not None
            lease.release()
        assert pool.statistics().available == 2000
        with pool.acquire(1):
            pass
    finally:
        backend.close()


def test_a_call_from_inside_a_section_is_refused_and_the_flock_stays_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal handler or finalizer that lands inside a section and calls the backend again:
    refused (``ReentrantCall``), never run under the same ``flock`` (an ``flock`` belongs to
    the open file, so a nested section would take it again and unlock it under the first)."""
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(2, name="outer", backend=backend)
        limiter = allotment.RateLimiter(10, per=1, name="inner", backend=backend)
        path = _manager_file(backend, "outer")
        seen: list[str] = []
        original = _state_file.write_state  # type: ignore[attr-defined]

        def write_then_reenter(*args: Any) -> None:
            original(*args)
            monkeypatch.undo()  # once
            for call in (lambda: pool.resize(3), limiter.try_acquire, lambda: pool.try_acquire(1)):
                try:
                    call()
                    seen.append("ran")
                except allotment.ReentrantCall:
                    seen.append("refused")
            other = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                seen.append("the flock was lost")
            except BlockingIOError:
                seen.append("held")
            finally:
                os.close(other)

        monkeypatch.setattr(_state_file, "write_state", write_then_reenter)
        pool.acquire(1).release()
        assert seen == ["refused", "refused", "refused", "held"]
        stats = pool.statistics()
        assert stats.capacity == 2
        assert stats.available == 2
        assert limiter.try_acquire()
    finally:
        backend.close()


def _spoil(path: str) -> None:
    """Overwrite both copies of a state file (the header stays): no copy is valid."""
    size = os.path.getsize(path)
    with open(path, "r+b") as file:
        file.seek(8 * HEADER_WORDS)
        file.write(b"\xa5" * (size - 8 * HEADER_WORDS))


@pytest.mark.parametrize("damage", ["spoiled", "removed"])
def test_a_limiter_whose_file_cannot_be_used_follows_its_on_unavailable_policy(
    tmp_path: Path, damage: str
) -> None:
    backend = _backend(tmp_path)
    try:
        limiters = {
            policy: allotment.RateLimiter(
                10, per=1, name=f"api-{policy}", on_unavailable=policy, backend=backend
            )
            for policy in ("raise", "allow", "deny")
        }
        window = allotment.WindowLimiter(5, per=1, name="window", backend=backend)
        for file in backend._meter_files.values():
            if damage == "spoiled":
                _spoil(file.path)
            else:
                os.unlink(file.path)
        expected = "damaged" if damage == "spoiled" else "removed while in use"
        for limiter in (limiters["raise"], window):
            with pytest.raises(allotment.BackendUnavailable, match=expected):
                limiter.try_acquire()
            with pytest.raises(allotment.BackendUnavailable, match=expected):
                limiter.acquire(timeout=1)
        allowing = limiters["allow"]
        assert all(allowing.try_acquire() for _ in range(50))  # fails open
        allowing.acquire(timeout=0)
        allowing.charge(3)  # dropped, logged
        denying = limiters["deny"]
        assert not denying.try_acquire()  # fails closed
        with pytest.raises(allotment.BackendUnavailable, match=expected):
            denying.acquire(timeout=1)  # no grant and no wait can be promised
        with pytest.raises(allotment.BackendUnavailable, match=expected):
            denying.statistics()
    finally:
        backend.close()


def test_a_manager_whose_file_was_removed_refuses_clearly(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(2, name="gone", backend=backend)
        held = pool.acquire(1)
        os.unlink(_manager_file(backend, "gone"))
        with pytest.raises(allotment.BackendUnavailable, match="removed while in use"):
            pool.try_acquire(1)
        with pytest.raises(allotment.BackendUnavailable, match="removed while in use"):
            pool.acquire(1, timeout=1)
        with pytest.raises(allotment.BackendUnavailable, match="removed while in use"):
            pool.resize(3)
        held.release()  # given back to whoever still shares the removed file
        assert pool.statistics().available == 2
        # A backend opened afresh starts a new file, shared again by whoever opens it.
        again = _backend(tmp_path)
        try:
            fresh = allotment.ResourceManager(2, name="gone", backend=again)
            with fresh.acquire(2, timeout=1):
                pass
        finally:
            again.close()
    finally:
        backend.close()


def test_the_doorbell_thread_passes_over_an_unusable_file_and_serves_the_others(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder, waiting = _backend(tmp_path), _backend(tmp_path)  # two processes, in effect
    try:
        bad = allotment.ResourceManager(1, name="bad", backend=holder)
        good = allotment.ResourceManager(1, name="good", backend=holder)
        bad_there = allotment.ResourceManager(1, name="bad", backend=waiting)
        good_there = allotment.ResourceManager(1, name="good", backend=waiting)
        held_bad, held_good = bad.acquire(1), good.acquire(1)
        stuck = Worker(lambda: bad_there.acquire(1, timeout=2), name="waits on the bad file")
        served = Worker(
            lambda: good_there.acquire(1), name="waits on the good file with no timeout"
        )
        stuck.start()
        wait_until(lambda: len(waiting._files["bad"].waiting) == 1, "queued on the bad file")
        served.start()
        wait_until(lambda: len(waiting._files["good"].waiting) == 1, "queued on the good file")
        path = _manager_file(holder, "bad")
        with open(path, "rb") as file:
            intact = file.read()
        _spoil(path)
        with caplog.at_level(logging.WARNING, logger="allotment.local"):
            held_good.release()  # rings the waiting backend, which reads both files
            lease = served.outcome()
        assert isinstance(lease, allotment.Lease)
        lease.release()
        assert any("damaged" in record.getMessage() for record in caplog.records)
        with pytest.raises(allotment.BackendUnavailable, match="damaged"):
            stuck.outcome()
        with open(path, "r+b") as file:
            file.write(intact)  # as it was: the stuck request's record is reclaimed below
        waiting.close()
        held_bad.release()
        assert bad.statistics().available == 1
    finally:
        waiting.close()
        holder.close()


def _queued_is(backend: allotment.LocalBackend, count: int) -> bool:
    return len(backend._files["shared"].waiting) == count


@pytest.mark.timeout(60)
@pytest.mark.parametrize("damage", ["spoiled", "removed"])
@pytest.mark.parametrize("where", ["this-process", "another-process"])
def test_waiters_with_no_timeout_learn_at_once_that_their_file_cannot_be_used(
    tmp_path: Path, damage: str, where: str
) -> None:
    noticing = _backend(tmp_path)
    waiting = noticing if where == "this-process" else _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(2, name="shared", backend=noticing)
        there = allotment.ResourceManager(2, name="shared", backend=waiting)
        held = pool.acquire(2)
        helpers = [
            Worker(lambda: there.acquire(1), name=f"waits with no timeout {n}") for n in (1, 2)
        ]
        for count, helper in enumerate(helpers, 1):
            helper.start()
            wait_until(functools.partial(_queued_is, waiting, count), "queued")
        path = _manager_file(noticing, "shared")
        with open(path, "rb") as file:
            intact = file.read()
        if damage == "spoiled":
            _spoil(path)
        else:
            os.unlink(path)
        expected = "damaged" if damage == "spoiled" else "removed while in use"
        with pytest.raises(allotment.BackendUnavailable, match=expected):
            pool.try_acquire(1)  # the first operation that sees it tells every waiter
        for helper in helpers:
            with pytest.raises(allotment.BackendUnavailable, match=expected):
                helper.outcome()
        assert not waiting._files["shared"].waiting
        if damage == "spoiled":
            with open(path, "r+b") as file:
                file.write(intact)  # as it was, so that the lease can be given back
        held.release()
    finally:
        if waiting is not noticing:
            waiting.close()
        noticing.close()


@pytest.mark.parametrize("warnings_are_errors", [False, True])
def test_closing_warns_if_the_doorbell_thread_does_not_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, warnings_are_errors: bool
) -> None:
    """``Bell.stop`` waited ten seconds for a stuck thread and then gave up in silence: the
    close went on with the thread still running. It warns now, and the close still ends
    (the stuck thread holds a state file's mutex here, which the reaps would wait behind)
    and gives up the identity, so that another backend reclaims what this one held, even
    when the warning is raised as an error (it comes last)."""
    from allotment.local import _backend as backend_module
    from allotment.local import _bell, _liveness

    entered, go_on = threading.Event(), threading.Event()
    backend = _backend(tmp_path)
    pool = allotment.ResourceManager(2, name="gpus", backend=backend)
    lease = pool.acquire(2)

    rung = backend_module.LocalBackend._rung

    def stuck(self: allotment.LocalBackend) -> None:
        if self is not backend:
            rung(self)
            return
        with self._files["gpus"].mutex:  # stands for a section blocked on a flock for good
            entered.set()
            go_on.wait(60)

    monkeypatch.setattr(backend_module.LocalBackend, "_rung", stuck)
    monkeypatch.setattr(_bell, "STOP_TIMEOUT", 0.2)
    bell = backend._the_bell()
    assert bell is not None
    backend.start_bell()
    thread = bell._thread
    assert thread is not None
    other = _backend(tmp_path)
    try:
        _liveness.ring(backend._directory, *backend.me())
        assert entered.wait(30)
        with warnings.catch_warnings():
            if warnings_are_errors:
                warnings.simplefilter("error")
                with pytest.raises(RuntimeWarning, match=r"did not stop within 0\.2 s"):
                    backend.close()
            else:
                with pytest.warns(RuntimeWarning, match=r"did not stop within 0\.2 s"):
                    backend.close()
        assert thread.is_alive()
        assert _liveness.is_dead(backend._directory, *backend.me())
        pool_elsewhere = allotment.ResourceManager(2, name="gpus", backend=other)
        with pool_elsewhere.acquire(2, timeout=30):  # the closed backend's 2 reclaimed
            pass
    finally:
        go_on.set()
        thread.join(30)
        backend.close()  # again: closes the file the stuck thread kept open
        other.close()
    assert not thread.is_alive()
    if os.path.isdir("/proc/self/fd"):
        assert _fds_into(os.path.realpath(backend.path)) == []
    lease.release()  # of a closed backend's lease: nothing left to give back, no warning


@hypothesis.settings(max_examples=150, deadline=None)
@hypothesis.given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("write"), st.integers(0, 3)),
            st.tuples(
                st.just("damage"), st.integers(0, 1), st.integers(0, 160), st.integers(1, 255)
            ),
            st.tuples(st.just("forget"), st.just(0)),
        ),
        max_size=12,
    )
)
def test_a_known_copy_is_read_exactly_as_the_file_would_be(steps: list[tuple[Any, ...]]) -> None:
    """The shortcut of a section (``read_known``) returns what a full read would, or nothing:
    after writes by this process or another (another's ``Known`` is not this one's), and any
    byte of either copy damaged."""
    import mmap

    from allotment.local import _layout

    buffer = mmap.mmap(-1, _layout.file_size(1))
    view = memoryview(buffer)
    view[: 8 * HEADER_WORDS] = _layout.header(1)
    state = _layout.State(0, 1, 10, 1, 0, [3], [3], [3], [])
    _layout.write_state(view, state, 1)
    known = state.known
    for step in steps:
        if step[0] == "write":
            try:
                current = _layout.read_state(view, 1)
            except _layout.CorruptState:
                current = None
            if current is None:
                continue
            for _ in range(step[1]):
                current.records.append(_layout.Record(1, 2, 3, current.next_token, 0, 5, [1]))
                current.next_token += 1
            _layout.write_state(view, current, 1)
            if step[1] % 2:  # written by this process: its known copy moves on
                known = current.known
        elif step[0] == "damage":
            view[_copy_offset(step[1]) + step[2]] ^= step[3]
        else:
            known = None
        try:
            full = _layout.read_state(view, 1)
        except _layout.CorruptState:
            full = None
        shortcut = _layout.read_known(view, 1, known)
        if shortcut is not None:
            assert full is not None
            assert (shortcut.generation, _layout_words(shortcut)) == (
                full.generation,
                _layout_words(full),
            )


def _layout_words(state: Any) -> list[Any]:
    return [
        state.names_hash,
        state.next_token,
        state.next_seq,
        state.resizes,
        state.declared,
        state.capacity,
        state.available,
        [(r.kind, r.pid, r.nonce, r.rid, r.seq, r.token, r.units) for r in state.records],
    ]


def _fds_into(directory: str) -> list[str]:
    """What this process's open descriptors and mappings point to inside ``directory``."""
    inside = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own descriptor, closed meanwhile
        if target.startswith(directory + os.sep):
            inside.append(target)
    with open("/proc/self/maps") as maps:
        inside += [line.split()[-1] for line in maps if directory + os.sep in line]
    return inside


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_closing_a_backend_closes_its_files_and_mappings(tmp_path: Path) -> None:
    """close() left every state file and meter file open and mapped: two descriptors and two
    mappings leaked per name per closed backend. Close is idempotent."""
    backend = _backend(tmp_path)
    directory = os.path.realpath(backend.path)
    pool = allotment.ResourceManager({"a": 2, "b": 1}, name="gpus", backend=backend)
    limiter = allotment.RateLimiter(10, per=1, name="api", backend=backend)
    window = allotment.WindowLimiter(5, per=1, name="window", backend=backend)
    keyed = allotment.KeyedRateLimiter(10, per=1, name="keyed", backend=backend)
    with pool.acquire({"a": 1}):
        limiter.acquire()
        window.acquire()
        keyed.acquire("k")
        opened = _fds_into(directory)
    # five files mapped (a descriptor and a mapping each), a liveness file and a doorbell
    assert len(opened) >= 2 * 5 + 2, opened
    backend.close()
    assert _fds_into(directory) == []
    backend.close()  # idempotent
    assert _fds_into(directory) == []


def test_a_closed_backends_managers_and_limiters_refuse_and_change_nothing(
    tmp_path: Path,
) -> None:
    """A manager or limiter made before close() kept granting: ``try_acquire`` wrote a holder
    record for the given-up identity, which any other process then reclaimed as a dead
    process's while this one still held the lease (capacity exceeded). Every call now
    raises, sync and async, and nothing is written."""
    backend = _backend(tmp_path)
    pool = allotment.ResourceManager(3, name="pool", backend=backend)
    limiter = allotment.RateLimiter(10, per=1, burst=2, name="api", backend=backend)
    window = allotment.WindowLimiter(2, per=1, name="window", backend=backend)
    keyed = allotment.KeyedRateLimiter(10, per=1, burst=2, name="keyed", backend=backend)
    keyed.acquire("old")  # a key made before the close
    backend.close()
    before = _contents(backend.path)

    def closed() -> Any:
        return pytest.raises(allotment.UnsupportedByBackend, match="this LocalBackend was closed")

    with closed():
        pool.try_acquire(1)
    with closed():
        pool.acquire(1)
    with closed():
        pool.acquire(1, timeout=5)
    with closed():
        pool.resize(4)
    with closed():
        pool.statistics()
    with closed():
        allotment.try_acquire_all([(pool, 1), (limiter, 1)])
    with closed():
        allotment.acquire_all([(limiter, 1), (pool, 1)], timeout=5)
    for rate in (limiter, window):
        with closed():
            rate.try_acquire()
        with closed():
            rate.acquire()
        with closed():
            rate.reserve()
        with closed():
            rate.charge(1)
        with closed():
            rate.statistics()
    for key in ("old", "new"):
        with closed():
            keyed.try_acquire(key)
        with closed():
            keyed.acquire(key)

    async def in_a_task() -> None:
        with closed():
            await pool.acquire_async(1)
        with closed():
            await limiter.acquire_async()
        with closed():
            await keyed.acquire_async("old")

    asyncio.run(in_a_task())
    with closed():
        allotment.ResourceManager(3, name="pool", backend=backend)
    assert _contents(backend.path) == before
    again = _backend(tmp_path)
    try:
        stats = allotment.ResourceManager(3, name="pool", backend=again).statistics()
        assert (stats.capacity, stats.available, stats.other_holders) == (3, 3, 0)
        assert (
            allotment.RateLimiter(10, per=1, burst=2, name="api", backend=again)
            .statistics()
            .available
            == 2
        )
        assert (
            allotment.WindowLimiter(2, per=1, name="window", backend=again).statistics().available
            == 2
        )
    finally:
        again.close()


def _contents(directory: str) -> dict[str, bytes]:
    """Every regular file under ``directory``, read (the doorbells are FIFOs)."""
    found = {}
    for parent, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(parent, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with open(path, "rb") as file:
                    found[path] = file.read()
    return found


def test_waiters_blocked_at_close_wake_with_the_error(tmp_path: Path) -> None:
    """A thread or task queued on a manager, or sleeping until its turn on a limiter, when
    its backend is closed wakes at once with the error (it slept until its timeout: the
    close had stopped the doorbell thread that would have woken it). The other process's
    queue no longer holds them."""
    closing, other = _backend(tmp_path), _backend(tmp_path)
    try:
        pool = allotment.ResourceManager(1, name="pool", backend=closing)
        elsewhere = allotment.ResourceManager(1, name="pool", backend=other)
        limiter = allotment.RateLimiter(1, per=3600, burst=1, name="api", backend=closing)
        held = elsewhere.acquire(1)
        limiter.acquire()  # the next one is due in an hour
        loop = asyncio.new_event_loop()
        looping = Worker(loop.run_forever, name="loop")
        looping.start()
        try:
            waiters = [
                Worker(lambda: pool.acquire(1, timeout=3600), name="thread on the pool"),
                Worker(lambda: limiter.acquire(timeout=3600), name="thread on the limiter"),
            ]
            for waiter in waiters:
                waiter.start()

            async def in_a_task() -> None:
                await pool.acquire_async(1, timeout=3600)

            task = asyncio.run_coroutine_threadsafe(in_a_task(), loop)
            wait_until(lambda: elsewhere.statistics().other_waiters == 2, "two are queued")
            wait_until(lambda: len(limiter.statistics().waiters) == 1, "one sleeps")
            closing.close()
            for waiter in waiters:
                with pytest.raises(allotment.UnsupportedByBackend, match="was closed"):
                    waiter.outcome()
            with pytest.raises(allotment.UnsupportedByBackend, match="was closed"):
                task.result(GENEROUS)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            looping.outcome()
            loop.close()
        stats = elsewhere.statistics()
        assert (stats.other_waiters, stats.other_holders, len(stats.holders)) == (0, 0, 1)
        held.release()
        with elsewhere.acquire(1, timeout=GENEROUS):
            pass
    finally:
        closing.close()
        other.close()
