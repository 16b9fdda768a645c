"""The Ray processes this project started, found by what only they hold: their Ray temp folder.

`ray stop` stops every Ray process on the machine (a user's own cluster included); here a process is ours
when its command line or one of its open files lies under our temp folder, and its children are ours too
(Ray's agents rename themselves, `ray::DashboardAgent`, but keep their log files open). Linux /proc only.
"""
from __future__ import annotations

import os
import signal
import time


def _cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return handle.read()


def _holds_file_under(pid: int, folder: str) -> bool:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(folder):
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="utf-8") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            tree.setdefault(parent, []).append(int(name))
    return tree


def with_descendants(pids: set[int]) -> set[int]:
    tree, found, todo = _children(), set(pids), list(pids)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def processes_under(folder: str) -> set[int]:
    """Live processes started for the Ray temp folder `folder` (and their descendants), this one excluded."""
    folder = os.path.realpath(folder)
    tag, mine = folder.encode(), os.getpid()
    roots = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == mine:
            continue
        pid = int(name)
        try:
            if tag in _cmdline(pid) or _holds_file_under(pid, folder):
                roots.add(pid)
        except OSError:
            continue
    return {pid for pid in with_descendants(roots) - {mine} if is_alive(pid)}


# What kill() waits between SIGTERM and SIGKILL. Every caller discards a whole Ray instance (a dead driver's
# leftovers, a local cluster going down), so a graceful exit saves nothing but a log line: measured on 2 cores,
# a live instance's raylet and GCS take 3.0 s to exit on SIGTERM and the agents of one whose driver was killed
# did not exit within 10 s, so a longer grace is only waited out in full.
STOP_GRACE_S = 1.0


def kill(pids: set[int], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM, then SIGKILL whatever is still there after `grace_s`."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(is_alive(p) for p in pids):
            time.sleep(0.1)


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def is_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is gone, only unreaped
    except OSError:
        return False


def stop_processes_under(folder: str, rounds: int = 5) -> int:
    """Stops every process of the Ray temp folder `folder`, including any started while stopping the first
    (a raylet restarting its workers); returns how many there were."""
    stopped: set[int] = set()
    for _ in range(rounds):
        found = processes_under(folder)
        if not found:
            break
        kill(found)
        stopped |= found
    return len(stopped)


def node_processes(node_id: str) -> set[int]:
    """The raylet of Ray node `node_id` and everything it started: what a lost machine takes with it."""
    flag = f"--node_id={node_id}".encode()
    raylets = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if flag in _cmdline(int(name)):
                    raylets.add(int(name))
            except OSError:
                continue
    return with_descendants(raylets)
