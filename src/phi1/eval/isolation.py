"""The part of the sandbox boundary that the kernel enforces (stdlib only).

A `Boundary` is set up once per executor process:
- a network namespace with no interfaces;
- a mount namespace in which the whole filesystem is read-only except one
  size-bounded tmpfs, the scratch space, seen at /tmp, /var/tmp and /dev/shm
  (and holding each program's workdir); what a program leaves there is wiped
  after it;
- a PID namespace whose init is the executor, with its own /proc: programs see
  only their own run's processes and cannot signal the executor (init ignores
  signals from inside), the caller or other workers;
- when started as root, two unprivileged uids: one for programs, one for the
  judge that runs the tests, so neither can signal or trace the other.
In each forked child, `confine()` gives the program its own IPC namespace
(SysV and POSIX IPC objects die with the run), applies resource limits and
drops to its uid; after each program, `kill_leftovers()` removes everything it
started and `wipe()` what it wrote.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
import shutil
import signal
import sys
import tempfile
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
MS_NOEXEC, MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 8, 1024, 2048, 1 << 21, 1 << 24
# Per-mount flags a read-only remount must keep (in a user namespace, dropping a locked one is refused).
MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}

_libc = ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> bool:
    return _libc.unshare(ctypes.c_int(flags)) == 0


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> bool:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    return _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) == 0


def _write_file(path: str, text: str) -> bool:
    try:
        with open(path, "w") as fh:
            fh.write(text)
        return True
    except OSError:
        return False


TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
MS_RDONLY, MS_REMOUNT = 1, 32


def _python_trees_under(tops: tuple[str, ...]) -> list[str]:
    """The outermost directories of this Python (prefix, sys.path) that lie below one of `tops`."""
    paths = sorted({os.path.realpath(p) for p in (sys.prefix, sys.exec_prefix, *sys.path) if p and os.path.isdir(p)})
    below = [p for p in paths if any(p.startswith(t + "/") for t in tops)]
    return [p for p in below if not any(p != q and p.startswith(q + "/") for q in below)]


def _bind_back(fd: int, path: str) -> bool:
    """Bind the directory held open as `fd` at `path` (inside a fresh tmpfs), read-only, reachable by any uid."""
    os.makedirs(path, exist_ok=True)
    top = next(t for t in TMP_DIRS if path.startswith(t + "/"))
    for parent in _parents_between(top, path):
        os.chmod(parent, 0o755)
    os.chmod(path, 0o755)
    return (_mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            and _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None))


class Boundary:
    """Namespaces, identity, scratch space and limits shared by all programs of one executor."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.info: dict = {"root": os.geteuid() == 0}
        self.uid = self.gid = None
        self.judge_uid = None
        self.base_nproc = 0
        self.scratch: str | None = None
        self._scratch_dev = None
        self._scratch_keep: set[str] = set()
        _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        self._isolate_network()
        self._private_tmp()
        self._pick_identity()
        if self.uid is not None and not self._expose_python():
            self.uid = self.gid = self.judge_uid = None
            self.info["identity"] = "caller (the Python install is not readable by other users)"
        self._own_pid_namespace()
        self._read_only_filesystem()
        self.info["ipc"] = "per-program" if _probe_ipc_namespace() else "shared"
        # The executor's own memory (and so the judge's, forked from it) is not readable through
        # /proc/PID/mem or ptrace by a program running under the same uid.
        _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.base = tempfile.mkdtemp(prefix="phi1-exec-")
        os.chmod(self.base, 0o711)  # the program uid may enter only its own workdir
        self._snapshot_scratch()

    def _isolate_network(self) -> None:
        mode = "none"
        if self.cfg.get("isolate_net", True):
            if _unshare(CLONE_NEWNET):
                mode = "netns"
            else:
                uid, gid = os.geteuid(), os.getegid()
                if uid != 0 and _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS):
                    # Map our ids to themselves; unmapped ids could not create files.
                    _write_file("/proc/self/setgroups", "deny")
                    _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
                    _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
                    mode = "userns+netns"
        self.info["network"] = mode

    def _private_tmp(self) -> None:
        """One tmpfs of `scratch_mb` is all a program can write: at /tmp, and bound at /var/tmp and /dev/shm."""
        mode = "shared"
        if self.cfg.get("private_tmp", True) and (_unshare(CLONE_NEWNS) or self.info["network"].startswith("userns")):
            # Without MS_PRIVATE our mounts would propagate back to the host.
            if _mount(None, "/", None, MS_REC | MS_PRIVATE, None):
                size = f"size={int(self.cfg.get('scratch_mb', 512))}m"
                # A virtual environment (or phi1 itself) living under /tmp, as in CI clones, would vanish
                # under the new tmpfs and programs could not import numpy & co: hold each such Python
                # tree by a descriptor across the mount and bind it back, read-only, at its own path.
                held = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in _python_trees_under(TMP_DIRS)]
                try:
                    ok = _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,{size}")
                    for extra in TMP_DIRS[1:]:
                        if ok and os.path.isdir(extra):
                            inner = os.path.join("/tmp", ".phi1" + extra.replace("/", "-"))
                            os.mkdir(inner)
                            os.chmod(inner, 0o1777)
                            ok = _mount(inner, extra, None, MS_BIND, None)
                    for path, fd in held:
                        ok = ok and _bind_back(fd, path)
                finally:
                    for _, fd in held:
                        os.close(fd)
                if ok:
                    mode = "private"
                    self.scratch = "/tmp"
                    self._scratch_dev = os.stat("/tmp").st_dev
        tempfile.tempdir = None
        self.info["tmp"] = mode
        self.info["scratch_mb"] = int(self.cfg.get("scratch_mb", 512)) if mode == "private" else None

    def _own_pid_namespace(self) -> None:
        """Become init of a new PID namespace with its own /proc (needs the private mount namespace).

        The process that called us stays outside as a plain parent: it waits for the new init and exits
        with its status; if it is killed, the init gets SIGKILL and the namespace goes with it."""
        self.info["pid"] = "shared"
        if self.info.get("tmp") != "private" or not self.cfg.get("private_pid", True):
            return
        if not _unshare(CLONE_NEWPID):
            return
        pid = os.fork()
        if pid:  # pragma: no cover - the outer parent only waits
            status = wait_blocking(pid)
            os._exit(os.waitstatus_to_exitcode(status) if status is not None else 1)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None):
            self.info["pid"] = "private"

    def _read_only_filesystem(self) -> None:
        """Remount every mount read-only in our namespace except the scratch space (the host is untouched)."""
        if self.info.get("tmp") != "private":
            self.info["fs"] = "writable (no private mount namespace)"
            return
        writable = set(TMP_DIRS)
        failed = []
        for point, options in _mounts():
            if point in writable or point.startswith("/tmp/") or "ro" in options:
                continue
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for opt in options:
                flags |= MOUNT_FLAGS.get(opt, 0)
            if not _mount(None, point, None, flags, None) and os.path.exists(point):
                failed.append(point)
        self.info["fs"] = "read-only except scratch" if not failed else f"read-only except scratch and {failed}"

    def _snapshot_scratch(self) -> None:
        if self.scratch is not None:
            self._scratch_keep = {e.path for e in _scan(self.scratch, self._scratch_dev, descend=lambda _: True)}

    def wipe(self, workdir: str) -> None:
        """Remove everything a program left: its workdir and, with a private scratch space, everything new in
        /tmp, /var/tmp and /dev/shm (the workdir lies inside it)."""
        if self.scratch is None:
            rmtree(workdir)
            return
        for entry in _scan(self.scratch, self._scratch_dev, descend=self._scratch_keep.__contains__):
            if entry.path in self._scratch_keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                rmtree(entry.path)
            else:
                with _suppress():
                    os.unlink(entry.path)

    def _pick_identity(self) -> None:
        uid = self.cfg.get("uid")
        judge_uid = None
        if uid == "auto":
            uid, judge_uid = _free_uid(0), _free_uid(1)
        if os.geteuid() == 0 and uid is not None:
            self.uid = self.gid = int(uid)
            self.info["identity"] = f"uid {self.uid}"
            # The judge (the tests) runs under a uid of its own, so the program cannot signal or trace it.
            self.judge_uid = int(judge_uid) if judge_uid is not None else None
            self.info["judge_identity"] = f"uid {self.judge_uid}" if self.judge_uid is not None else "caller"
        else:
            # Not root: RLIMIT_NPROC counts every process of this user, so
            # leave room for the ones that already exist.
            self.base_nproc = _count_user_processes(os.getuid())
            self.info["identity"] = "caller"

    def _expose_python(self) -> bool:
        """Make the interpreter and sys.path readable by the slot uid inside our mount namespace.

        A Python installed under a root-only directory (e.g. /root/.pyenv) is
        unreadable after the uid drop. We shadow that directory with a tmpfs
        and bind back only the Python trees, which also hides its other contents.
        """
        needed = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix,
                         sys.base_exec_prefix, *sys.path) if p and os.path.isdir(p)})
        roots: list[str] = []
        for p in needed:
            if not any(p == r or p.startswith(r + "/") for r in roots):
                roots.append(p)
        blocked: dict[str, list[str]] = {}
        for p in roots:
            top = _first_closed_dir(p)
            if top == p:
                return False
            if top is not None:
                blocked.setdefault(top, []).append(p)
        if not blocked:
            return True
        if self.info["tmp"] != "private":
            return False
        hold_base = tempfile.mkdtemp(prefix="phi1-hold-", dir="/tmp")
        for top, paths in blocked.items():
            holds = []
            for i, p in enumerate(paths):
                hold = os.path.join(hold_base, f"{len(os.listdir(hold_base))}")
                os.mkdir(hold)
                if not _mount(p, hold, None, MS_BIND | MS_REC, None):
                    return False
                holds.append((hold, p))
            if not _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m"):
                return False
            for hold, p in holds:
                os.makedirs(p, exist_ok=True)
                os.chmod(p, 0o755)
                for parent in _parents_between(top, p):
                    os.chmod(parent, 0o755)
                if not _mount(hold, p, None, MS_BIND | MS_REC, None):
                    return False
        return True

    def confine(self, timeout: float, judge: bool = False) -> None:
        """In the forked child: its own IPC namespace, resource limits, then drop to the program's (or the
        judge's) uid, irreversibly."""
        cfg = self.cfg
        _unshare(CLONE_NEWIPC)  # SysV/POSIX IPC objects die with this child instead of outliving the run
        mem = int(cfg.get("memory_mb", 2048)) << 20
        fsize = int(cfg.get("fsize_mb", 64)) << 20
        cpu = int(timeout) + 1
        nproc = int(cfg.get("nproc", 64)) + self.base_nproc
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_DATA, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
        uid = self.judge_uid if judge else self.uid
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        if judge:
            _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def kill_leftovers(self, *pids: int) -> None:
        """SIGKILL the program, the judge and everything they started, wherever it went."""
        for pid in pids:
            with _suppress():
                os.killpg(pid, signal.SIGKILL)
        uids = [u for u in (self.uid, self.judge_uid) if u is not None]
        for uid in uids:
            # kill(-1) from the slot uid reaches every process of that uid, even
            # ones that left the process group or double-forked; the kernel does
            # it under the tasklist lock, so a fork bomb cannot outrun it.
            reaper = os.fork()
            if reaper == 0:  # pragma: no cover - child
                try:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
                    os.kill(-1, signal.SIGKILL)
                finally:
                    os._exit(0)
            wait_blocking(reaper)
        if not uids or self.judge_uid is None:
            for _ in range(50):
                pids = _descendants(os.getpid())
                if not pids:
                    break
                for p in pids:
                    with _suppress():
                        os.kill(p, signal.SIGKILL)
                self.reap_all(block_s=0.05)

    def reap_all(self, block_s: float = 2.0) -> None:
        """Reap our children and the orphans re-parented to us (we are a subreaper)."""
        end = time.monotonic() + block_s
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                if time.monotonic() > end:
                    return
                time.sleep(0.001)

def _scan(root: str, dev: int, descend):
    """Every entry below `root` on the filesystem `dev`, listed before it is yielded; a directory is entered
    when `descend(path)` says so (other mounts, such as bound-back Python trees, are never entered)."""
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            yield entry
            if descend(entry.path) and entry.is_dir(follow_symlinks=False) \
                    and entry.stat(follow_symlinks=False).st_dev == dev:
                stack.append(entry.path)


def rmtree(path: str) -> None:
    def fix(func, p, _exc):
        # The program may have removed permissions on what it created.
        with _suppress():
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
    shutil.rmtree(path, onerror=fix)


def _mounts() -> list[tuple[str, list[str]]]:
    """(mount point, per-mount options) of every mount in our namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
            out.append((point, fields[5].split(",")))
    return out


def _probe_ipc_namespace() -> bool:
    """Whether a forked child can get its own IPC namespace (what `confine` does for every program)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if _unshare(CLONE_NEWIPC) else 1)
    status = wait_blocking(pid)
    return status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def wait_blocking(pid: int):
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:
            return None
        except InterruptedError:
            continue


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            out.append(child)
            stack.append(child)
    return out


def _free_uid(lane: int = 0) -> int | None:
    """A uid no live process of another harness uses: derived from our own pid.

    Each slot needs its own uids (lane 0: programs, lane 1: the judge), because RLIMIT_NPROC is counted
    per uid and the clean-up kills every process of a slot uid.
    """
    pid = os.getpid()
    try:
        with open("/proc/self/uid_map") as fh:
            ranges = [tuple(int(x) for x in line.split()) for line in fh if line.strip()]
    except OSError:
        ranges = [(0, 0, 1 << 32)]
    for inside, _outside, count in ranges:
        for candidate in (2_000_000_000 + lane * 100_000_000 + pid, inside + count - 2 - pid - lane * (1 << 23)):
            if inside + 1000 <= candidate < inside + count - 1 and candidate != 65534:
                return candidate
    return None


def _first_closed_dir(path: str) -> str | None:
    """The first directory on the way to `path` that other users cannot enter."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            return d
    return None


def _parents_between(top: str, path: str) -> list[str]:
    out, d = [], os.path.dirname(path)
    while d.startswith(top + "/"):
        out.append(d)
        d = os.path.dirname(d)
    return out


def _count_user_processes(uid: int) -> int:
    n = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, typ, exc, tb):
        return typ is not None and issubclass(typ, OSError)


