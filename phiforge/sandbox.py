"""Run untrusted Python (model outputs, generated unit tests) in a contained child process.

This is process isolation from Linux kernel features, NOT a virtual machine: the code shares the host kernel, so a
kernel exploit escapes all of it. Treat it as defence in depth for code that is wrong or mischievous.

A run goes parent -> trampoline (this file as a script) -> init (PID 1 of fresh namespaces) -> worker, exec'd as
`python -s -S main.py` (stdlib only, no site-packages). Protections, as named by capabilities():

- rlimits: RLIMIT_AS (virtual memory per process, so max_processes * memory_mb bounds the total; there is no cgroup),
  RLIMIT_CPU (per process; SIGXCPU reads as "timeout"), RLIMIT_FSIZE (Python ignores SIGXFSZ, so writes fail with
  EFBIG), RLIMIT_NPROC (counted per uid, hence the spare uid), RLIMIT_CORE=0.
- pid_namespace: the program is PID 2 under a tiny init and cannot see or signal host processes. When init exits
  (program done, or the timeout kills init) the kernel kills the whole namespace: nothing outlives the call.
- mount_namespace: private mounts, a fresh /proc (the namespace's processes only, so no other /proc/<pid>/environ)
  and a size-limited tmpfs work dir that vanishes with the namespace.
- readonly_root: every other mount read-only and nosuid there (device nodes such as /dev/null ignore that).
- hidden_home: the caller's home is covered by an empty read-only tmpfs (the interpreter is bound back in place if it
  lives there), so dotfile credentials cannot be read.
- network_namespace: only an unconfigured loopback: no DNS, internet or host loopback services. Unix sockets bound to
  a filesystem path stay reachable where their file permissions let the sandbox uid in.
- ipc_namespace: SysV IPC and POSIX message queues are private.
- landlock_fs: the Landlock LSM refuses writes, creations, deletions and renames outside the work dir and /dev/null,
  whatever the file permissions, and forbids mounting. Reads and exec stay allowed everywhere.
- landlock_net / landlock_scope (Landlock ABI 4 / 6): TCP bind/connect refused; signals, ptrace, abstract Unix
  sockets towards processes outside the sandbox refused.
- no_new_privs: setuid or file-capability binaries grant nothing; the capability bounding set is emptied.
- separate_uid (root only): a fresh unused uid, so file permissions, signal/ptrace checks and the process count
  separate it from the caller. A non-root caller gets the namespaces via a user namespace but keeps its own uid.

Always on: a scrubbed environment (PATH, LANG, HOME/TMPDIR = work dir, fixed PYTHON* settings; the trampoline's too),
stdin from a file, stdout/stderr capped (head and tail kept), a wall-clock timeout, the temp dir removed afterwards.
A missing protection makes run_python refuse, naming it, unless allow_weaker=True. Not covered: side channels, disk
and memory bandwidth, nested user namespaces (kernel attack surface: closing it would need seccomp), reading
world-readable files (/etc, the repository), tmpfs pages (up to the work dir size) outside RLIMIT_AS.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pwd
import random
import resource
import select
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from functools import lru_cache

if __name__ != "__main__":  # as the trampoline this file runs under `python -I -S`, where phiforge isn't importable
    from phiforge.errors import PhiforgeError

PROTECTIONS = ("rlimits", "pid_namespace", "mount_namespace", "readonly_root", "hidden_home", "network_namespace",
               "ipc_namespace", "landlock_fs", "landlock_net", "landlock_scope", "no_new_privs", "separate_uid")
OUTPUT_CAP = 64 * 1024
# Far above distro users and the usual /etc/subuid ranges, so no file or process already belongs to these uids.
_SANDBOX_UIDS = range(2_000_000, 3_000_000)
_SETUP_FAILED = 125
_CUT = b"\n[... the sandbox dropped output here ...]\n"
_GRACE_S = 10.0  # beyond timeout_s before the parent stops trusting the trampoline to end the run

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 0x2, 0x4, 0x8
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 0x1000, 0x2000, 0x4000, 0x40000
_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID = 0x1, 0x2
_AT_FDCWD, _AT_RECURSIVE = -100, 0x8000
# Syscalls added since 5.x share one number on every architecture.
_SYS_MOUNT_SETATTR, _SYS_LANDLOCK_CREATE, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT = 442, 444, 445, 446
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 1, 24, 38
# Landlock write-side rights: write_file, remove_dir/file, make_char/dir/reg/sock/fifo/block/sym (ABI 1).
_LL_WRITE = sum(1 << bit for bit in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))
_LL_WRITE_FILE, _LL_REFER, _LL_TRUNCATE = 1 << 1, 1 << 13, 1 << 14


@dataclass
class SandboxResult:  # a run's outcome; stdout and stderr keep at most OUTPUT_CAP bytes each
    status: str  # "ok" | "error" | "timeout" | "memory" | "killed"
    returncode: int | None  # exit code, -signal, or None when the run was cut off by the timeout
    stdout: str
    stderr: str
    wall_s: float


def capabilities() -> dict[str, bool]:
    """Which protections actually work on this machine, found by launching one probe child (cached)."""
    active = set(_probe())
    return {name: name in active for name in PROTECTIONS}


def run_python(code: str, *, stdin: str = "", timeout_s: float = 10.0, memory_mb: int = 512, max_processes: int = 16,
               max_file_mb: int = 16, cpu_s: float | None = None, allow_weaker: bool = False) -> SandboxResult:
    """Run `code` as a Python program in the sandbox; see the module docstring for what contains it."""
    for name, value in (("timeout_s", timeout_s), ("memory_mb", memory_mb), ("max_processes", max_processes),
                        ("max_file_mb", max_file_mb), ("cpu_s", 1 if cpu_s is None else cpu_s)):
        if not value > 0:
            raise PhiforgeError(f"sandbox limit {name} must be positive, got {value!r}")
    caps = capabilities()
    missing = [name for name, ok in caps.items() if not ok]
    if missing and not allow_weaker:
        raise PhiforgeError(f"sandbox protection unavailable on this machine: {', '.join(missing)} "
                            f"(pass allow_weaker=True to run untrusted code without it)")
    limits = {"memory_mb": int(memory_mb), "max_processes": int(max_processes), "max_file_mb": int(max_file_mb),
              "cpu_s": max(1, math.ceil(timeout_s + 1 if cpu_s is None else cpu_s))}
    run = _launch(code, stdin, timeout_s, limits, [n for n, ok in caps.items() if ok], probe=False)
    if run["error"]:
        raise PhiforgeError(f"sandbox setup failed: {'; '.join(run['error'])}")
    rc, stderr = run["returncode"], run["stderr"]
    status = ("timeout" if run["timed_out"] or rc == -signal.SIGXCPU else "killed" if rc is None or rc < 0
              else "ok" if rc == 0 else "memory" if "MemoryError" in "".join(stderr.splitlines(True)[-3:])
              else "error")
    return SandboxResult(status, None if run["timed_out"] else rc, run["stdout"], stderr, run["wall_s"])


def run_tests(solution: str, tests: str, **limits) -> SandboxResult:
    """Run a solution followed by its tests as one program: they pass iff the result's status is "ok" (exit 0)."""
    return run_python(f"{solution}\n\n{tests}\n", **limits)


@lru_cache(maxsize=1)
def _probe() -> tuple[str, ...]:
    limits = {"memory_mb": 512, "max_processes": 16, "max_file_mb": 16, "cpu_s": 10}
    with suppress(OSError):  # no trampoline could start: nothing is active
        if sys.platform.startswith("linux"):
            return tuple(k for k, ok in _launch("", "", 10.0, limits, list(PROTECTIONS), True)["probe"].items() if ok)
    return ()


def _capped(buf: bytearray, limit: int) -> bytearray:
    """Keeps the head and the tail (where a traceback lands) of an over-long stream, marking the cut."""
    if len(buf) > limit:
        buf[OUTPUT_CAP // 2:-OUTPUT_CAP // 2] = _CUT  # an earlier _CUT falls inside the replaced middle
    return buf


def _outermost_homes() -> list[str]:
    homes = {os.path.realpath(h) for h in (pwd.getpwuid(os.getuid()).pw_dir, os.environ.get("HOME")) if h}
    homes = {h for h in homes if h != "/" and os.path.isdir(h)}
    return sorted(h for h in homes if not any(o != h and _within(h, o) for o in homes))


def _within(path: str, parent: str) -> bool:
    return os.path.commonpath([path, parent]) == parent


def _launch(code: str, stdin: str, timeout_s: float, limits: dict, enable: list[str], probe: bool) -> dict:
    base = os.path.realpath(tempfile.mkdtemp(prefix="phiforge-sandbox-"))
    try:
        run = _start(base, code, stdin, timeout_s, limits, enable, probe)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for line in run.pop("status").splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "timeout":
            run["timed_out"] = True
        elif kind in ("exit", "signal"):
            run["returncode"] = int(rest) if kind == "exit" else -int(rest)
        elif kind in ("error", "probe"):
            run[kind] = run[kind] + [rest] if kind == "error" else json.loads(rest)
    if not run["error"] and run["returncode"] is None and not run["timed_out"] and run["trampoline_rc"] != 0:
        run["error"].append(f"trampoline exited {run['trampoline_rc']}: {run['stderr'][-500:]}")
    return run


def _start(base: str, code: str, stdin: str, timeout_s: float, limits: dict, enable: list[str], probe: bool) -> dict:
    uid, gid = (random.choice(_SANDBOX_UIDS),) * 2 if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chmod(base, 0o711)  # the sandbox uid may traverse to main.py and work/, not list the directory
    program, stdin_path, work = (os.path.join(base, name) for name in ("main.py", "stdin", "work"))
    for path, text in ((program, code), (stdin_path, stdin)):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o644)
    os.mkdir(work, 0o700)
    os.chown(work, uid, gid)  # only used as-is when no mount namespace puts a tmpfs here
    exe = os.path.realpath(sys.executable)
    env = {"PATH": f"{os.path.dirname(exe)}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work,
           "TMPDIR": work, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUTF8": "1"}
    status_r, status_w = os.pipe()
    cfg = {"status_fd": status_w, "base": base, "program": program, "stdin": stdin_path, "work": work, "uid": uid,
           "gid": gid, "exe": exe, "prefix": os.path.realpath(sys.base_prefix), "homes": _outermost_homes(),
           "work_mb": max(64, 4 * limits["max_file_mb"]), "timeout_s": timeout_s, "limits": limits,
           "enable": enable, "probe": probe, "env": env}
    start = time.monotonic()
    try:
        proc = subprocess.Popen([exe, "-I", "-S", os.path.abspath(__file__), json.dumps(cfg)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(status_w,), env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd=base,
                                start_new_session=True)
    finally:
        os.close(status_w)
    out, err, status = bytearray(), bytearray(), bytearray()
    with proc:
        try:
            cut_off = _drain({proc.stdout.fileno(): out, proc.stderr.fileno(): err, status_r: status},
                             start + timeout_s + _GRACE_S, proc.pid)
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        finally:  # on Ctrl-C too: never leave the run behind (killing the unreaped trampoline kills init too)
            os.close(status_r)
            if proc.returncode is None:
                _kill_group(proc.pid)
    out, err, status = (_capped(b, OUTPUT_CAP + len(_CUT)).decode("utf-8", "replace") for b in (out, err, status))
    return {"stdout": out, "stderr": err, "status": status, "wall_s": time.monotonic() - start,
            "timed_out": cut_off, "returncode": None, "error": [], "probe": {}, "trampoline_rc": proc.returncode}


def _drain(captures: dict[int, bytearray], deadline: float, trampoline: int) -> bool:
    """Read every pipe to EOF (EOF means every process holding it is gone); True if the parent had to kill."""
    cut_off = False
    with selectors.DefaultSelector() as sel:
        for fd in captures:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                if cut_off:
                    break
                # The trampoline should have ended the run already; killing it makes init die (PDEATHSIG).
                cut_off = True
                _kill_group(trampoline)
                deadline = time.monotonic() + 5
                continue
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    _capped(captures[key.fd], 2 * OUTPUT_CAP).extend(chunk)
                else:
                    sel.unregister(key.fd)
    return cut_off


def _kill_group(pgid: int) -> None:
    with suppress(OSError):  # already gone
        os.killpg(pgid, signal.SIGKILL)


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p)
    libc.unshare.argtypes = (ctypes.c_int,)
    libc.prctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong)
    return libc


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _syscall(nr: int, *args) -> int:
    # Wrap ints as c_long: a bare Python int travels as a 32-bit C int, leaving a register's upper half undefined.
    args = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    return _check(_libc().syscall(ctypes.c_long(nr), *args))


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = [None if s is None else s.encode() for s in (source, target, fstype, data)]
    _check(_libc().mount(enc[0], enc[1], enc[2], flags, enc[3]))


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags))


class _Setup:
    """Runs named setup steps and remembers which worked; forked children inherit it along with the namespaces."""

    def __init__(self, cfg: dict) -> None:
        self.cfg, self.fd, self.enabled, self.done = cfg, cfg["status_fd"], set(cfg["enable"]), {}

    def report(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def step(self, name: str, fn, needs: tuple[str, ...] = ()) -> None:
        """Run fn as protection `name`; fn returning False means the kernel lacks it."""
        if name not in self.enabled or self.done.get(name) is False:
            self.done[name] = False
            return
        try:
            missing = [n for n in needs if not self.done.get(n)]
            if missing or fn() is False:
                raise OSError(f"needs {', '.join(missing)}" if missing else "not supported by this kernel")
        except Exception as exc:
            if not self.cfg["probe"]:  # a protection the caller relies on failed: never run the code without it
                self.report(f"error {name}: {exc}")
                os._exit(_SETUP_FAILED)
            self.done[name] = False
            return
        self.done[name] = True


def _trampoline(cfg: dict) -> None:
    s = _Setup(cfg)
    os.set_inheritable(s.fd, False)  # init and the worker keep it across fork; exec of the program closes it
    if os.geteuid() != 0:
        with suppress(OSError):  # if this fails, each namespace step below fails and says so
            uid, gid = os.getuid(), os.getgid()
            _unshare(_CLONE_NEWUSER)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
    # Making every mount private first keeps the mounts made later from propagating back to the caller's namespace.
    s.step("mount_namespace", lambda: (_unshare(_CLONE_NEWNS), _mount(None, "/", None, _MS_REC | _MS_PRIVATE)))
    s.step("network_namespace", lambda: _unshare(_CLONE_NEWNET))
    s.step("ipc_namespace", lambda: _unshare(_CLONE_NEWIPC))
    s.step("pid_namespace", lambda: _unshare(_CLONE_NEWPID))
    init = os.fork()
    if init == 0:
        _init(s)
    pidfd = os.pidfd_open(init)
    if not select.select([pidfd], [], [], cfg["timeout_s"])[0]:
        # init is our unreaped child, so its pid cannot have been reused; with a PID namespace its death kills all.
        for kill in (os.kill, os.killpg):
            with suppress(OSError):
                kill(init, signal.SIGKILL)
        s.report("timeout")
    os.waitpid(init, 0)


def _init(s: _Setup) -> None:
    cfg = s.cfg
    try:
        os.setsid()  # own process group, so a kill(0, ...) from inside cannot reach the trampoline
        _check(_libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0))
        os.umask(0o022)
        s.step("mount_namespace", lambda: _private_dirs(cfg, bool(s.done.get("pid_namespace"))))
        s.step("hidden_home", lambda: _hide_homes(cfg), needs=("mount_namespace",))
        s.step("readonly_root", lambda: _readonly_root(cfg["work"]), needs=("mount_namespace",))
        worker = os.fork()
        if worker == 0:
            _worker(s)
        pid, status = os.wait()
        while pid != worker:  # as PID 1 we also reap orphans
            pid, status = os.wait()
        s.report(f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}")
        if not s.done.get("pid_namespace"):
            os.killpg(0, signal.SIGKILL)  # weaker fallback: only our process group can be swept
    except BaseException as exc:
        s.report(f"error init: {exc}")
    os._exit(0)


def _private_dirs(cfg: dict, fresh_proc: bool) -> None:
    if fresh_proc:
        _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    _mount("tmpfs", cfg["work"], "tmpfs", _MS_NOSUID | _MS_NODEV,
           f"size={cfg['work_mb']}m,mode=0700,uid={cfg['uid']},gid={cfg['gid']}")


def _hide_homes(cfg: dict) -> None:
    prefix, homes = cfg["prefix"], cfg["homes"]
    if any(_within(cfg["base"], home) for home in homes):
        raise OSError("the temp dir lies inside a home directory: point TMPDIR elsewhere")
    stage = os.path.join(cfg["base"], "py")
    keep_python = any(_within(prefix, home) for home in homes)
    if keep_python:
        os.mkdir(stage, 0o755)
        _mount(prefix, stage, None, _MS_BIND | _MS_REC)
    for home in homes:
        _mount("tmpfs", home, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    if keep_python:  # same path as outside, so the interpreter's RPATH and prefix lookup keep working
        os.makedirs(prefix, 0o755, exist_ok=True)
        _mount(stage, prefix, None, _MS_MOVE)


def _readonly_root(work: str) -> None:
    # One mount_setattr(AT_RECURSIVE) covers every mount; then the work dir alone gets its write access back.
    for path, flags, attr_set, attr_clr in (("/", _AT_RECURSIVE, _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID, 0),
                                            (work, 0, 0, _MOUNT_ATTR_RDONLY)):
        attr = ctypes.create_string_buffer(struct.pack("<QQQQ", attr_set, attr_clr, 0, 0), 32)
        _syscall(_SYS_MOUNT_SETATTR, _AT_FDCWD, ctypes.c_char_p(path.encode()), flags, attr, 32)


def _worker(s: _Setup) -> None:
    cfg = s.cfg
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored dispositions survive exec; give the program defaults
            signal.signal(sig, signal.SIG_DFL)
        os.chdir(cfg["work"])
        os.dup2(os.open(cfg["stdin"], os.O_RDONLY | os.O_CLOEXEC), 0)  # the copy on fd 0 survives exec
        s.step("rlimits", lambda: _set_rlimits(cfg["limits"]))
        s.step("no_new_privs", _drop_privileges)
        landlock: dict[str, bool] = {}
        s.step("landlock_fs", lambda: landlock.update(_landlock(cfg["work"], s.enabled)))
        for name in ("landlock_net", "landlock_scope"):
            s.step(name, lambda name=name: landlock[name], needs=("landlock_fs",))
        uid, gid = cfg["uid"], cfg["gid"]  # without root (or in a user namespace) setgroups already fails
        s.step("separate_uid", lambda: (os.setgroups([]), os.setresgid(gid, gid, gid), os.setresuid(uid, uid, uid)))
        if cfg["probe"]:
            s.report("probe " + json.dumps({name: bool(s.done.get(name)) for name in PROTECTIONS}))
            os._exit(0)
        os.execve(cfg["exe"], [cfg["exe"], "-s", "-S", cfg["program"]], cfg["env"])
    except BaseException as exc:
        s.report(f"error worker: {exc}")
    os._exit(_SETUP_FAILED)


def _set_rlimits(limits: dict) -> None:
    memory, file_size = limits["memory_mb"] << 20, limits["max_file_mb"] << 20
    for res, soft, hard in ((resource.RLIMIT_AS, memory, memory), (resource.RLIMIT_FSIZE, file_size, file_size),
                            (resource.RLIMIT_CPU, limits["cpu_s"], limits["cpu_s"] + 1), (resource.RLIMIT_CORE, 0, 0),
                            (resource.RLIMIT_NPROC, limits["max_processes"], limits["max_processes"])):
        resource.setrlimit(res, (soft, hard))


def _drop_privileges() -> None:
    prctl = _libc().prctl
    _check(prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))
    # Fails with EINVAL past the last capability the kernel knows, or EPERM when there is none left to drop.
    cap = 0
    while prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
        cap += 1


def _landlock(work: str, wanted: set[str]) -> dict[str, bool]:
    abi = _syscall(_SYS_LANDLOCK_CREATE, None, 0, 1)  # flag 1: return the ABI version
    fs = _LL_WRITE | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0)
    net = 0b11 if abi >= 4 and "landlock_net" in wanted else 0  # bind_tcp | connect_tcp, with no rule allowing any
    scoped = 0b11 if abi >= 6 and "landlock_scope" in wanted else 0  # abstract unix sockets | signals
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8  # older kernels reject a struct with fields they don't know
    attr = ctypes.create_string_buffer(struct.pack("<QQQ", fs, net, scoped)[:size], size)
    ruleset = _syscall(_SYS_LANDLOCK_CREATE, attr, size, 0)  # close-on-exec, like the O_PATH fds
    for path, access in ((work, fs), ("/dev/null", fs & (_LL_WRITE_FILE | _LL_TRUNCATE))):
        rule = struct.pack("<Qi", access, os.open(path, os.O_PATH | os.O_CLOEXEC))  # packed path_beneath_attr
        _syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, ctypes.create_string_buffer(rule, 12), 0)
    _syscall(_SYS_LANDLOCK_RESTRICT, ruleset, 0)
    return {"landlock_net": bool(net), "landlock_scope": bool(scoped)}


if __name__ == "__main__":
    _cfg = json.loads(sys.argv[1])
    try:
        _trampoline(_cfg)
    except BaseException as _exc:  # init and worker never return here: they always _exit
        os.write(_cfg["status_fd"], f"error trampoline: {_exc}\n".encode())
    os._exit(0)
