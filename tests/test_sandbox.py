"""The sandbox contains hostile programs: each test attacks one protection and checks the parent is unharmed."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from phiforge import sandbox
from phiforge.errors import PhiforgeError
from phiforge.sandbox import run_python, run_tests

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

MARKER = "phiforge-bomb-" + uuid.uuid4().hex[:8]
REPO = Path(__file__).resolve().parents[1]


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


def _sandbox_processes() -> list[str]:
    """Processes, seen from the parent, that belong to a sandbox run: by argv marker or by sandbox uid."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            uid = int(next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines()
                           if l.startswith("Uid:")).split()[1])
        except (OSError, StopIteration):
            continue  # exited while we looked
        if b"phiforge-sandbox-" in cmdline or MARKER.encode() in cmdline or uid in sandbox._SANDBOX_UIDS:
            found.append(f"{pid} uid={uid} {cmdline[:120]!r}")
    return found


def _environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}  # pytest rewrites it per phase


@pytest.fixture(autouse=True)
def parent_unharmed():
    """Every run must leave the parent as it was: same cwd and environment, no sandbox process or directory left."""
    if not all(sandbox.capabilities().values()):
        missing = [k for k, ok in sandbox.capabilities().items() if not ok]
        pytest.skip(f"sandbox protections unavailable here: {missing}")
    cwd, env = os.getcwd(), _environ()
    tmp = Path(tempfile.gettempdir())
    before = {p.name for p in tmp.glob("phiforge-sandbox-*")}
    yield
    assert os.getcwd() == cwd
    assert _environ() == env
    assert _sandbox_processes() == []
    assert {p.name for p in tmp.glob("phiforge-sandbox-*")} <= before


def test_all_protections_active_as_root_on_a_recent_kernel():
    if os.geteuid() != 0 or _kernel() < (6, 12):
        pytest.skip("every protection (Landlock ABI 6 scopes, spare uid) needs root and Linux >= 6.12")
    assert sandbox.capabilities() == dict.fromkeys(sandbox.PROTECTIONS, True)


def test_normal_program_prints_and_exits_zero():
    result = run_python("print('hello', 6 * 7)")
    assert (result.status, result.returncode, result.stdout) == ("ok", 0, "hello 42\n")
    assert result.wall_s > 0


def test_exception_is_error_with_traceback():
    result = run_python("def f():\n    raise ValueError('boom')\nf()\n")
    assert result.status == "error" and result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and "ValueError: boom" in result.stderr


def test_stdin_is_passed_through():
    result = run_python("import sys\nprint(sys.stdin.read().upper(), end='')", stdin="abc\ndef\n")
    assert (result.status, result.stdout) == ("ok", "ABC\nDEF\n")


def test_infinite_loop_times_out():
    result = run_python("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and result.returncode is None
    assert result.wall_s >= 1.0  # killed at its budget, not before (how soon after depends on the machine's load)


def test_output_is_capped():
    result = run_python("import sys\nsys.stdout.write('x' * 10_000_000)\nprint('END')")
    assert result.status == "ok"
    assert len(result.stdout) < sandbox.OUTPUT_CAP + 200 and result.stdout.endswith("END\n")


def test_fork_bomb_is_contained():
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = run_python(code, timeout_s=1.5, max_processes=16)
    assert result.status in ("timeout", "error", "killed")
    assert result.wall_s < 4.0  # the fixture then checks no forked process outlived the call


def test_popen_bomb_is_contained():
    code = f"""
import subprocess, sys
children = []
while True:
    try:
        children.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{MARKER}"]))
    except OSError:
        pass
"""
    result = run_python(code, timeout_s=2.0, max_processes=8)
    assert result.status in ("timeout", "error", "killed")


def test_orphaned_grandchildren_do_not_outlive_the_call():
    code = f"""
import os, subprocess, sys
for _ in range(4):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "{MARKER}"], start_new_session=True)
print("spawned", flush=True)
os._exit(0)
"""
    result = run_python(code, timeout_s=5.0)
    assert (result.status, result.stdout) == ("ok", "spawned\n")


def test_huge_allocation_is_memory():
    result = run_python("x = bytearray(10**10)", memory_mb=256)
    assert result.status == "memory" and "MemoryError" in result.stderr


def test_incremental_memory_bomb_is_memory():
    result = run_python("chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))\n", memory_mb=256)
    assert result.status in ("memory", "error") and "MemoryError" in result.stderr


def test_writes_outside_work_dir_fail_and_inside_works():
    name = f"phiforge-sandbox-escape-{uuid.uuid4().hex}"
    targets = [Path("/tmp") / name, REPO / name, Path.home() / name, Path("/dev/shm") / name]
    code = f"""
import os
for path in {[str(t) for t in targets]!r}:
    try:
        with open(path, "w") as f:
            f.write("escaped")
        print("WROTE", path)
    except OSError as exc:
        print("refused", path, type(exc).__name__)
with open("inside.txt", "w") as f:
    f.write("fine")
os.makedirs("sub/dir")
print("inside", open("inside.txt").read(), os.path.isdir("sub/dir"))
"""
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert "WROTE" not in result.stdout and result.stdout.count("refused") == len(targets)
    assert "inside fine True" in result.stdout
    assert not any(t.exists() for t in targets)


def test_loopback_server_in_the_parent_is_unreachable():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.setblocking(False)
    port = server.getsockname()[1]
    code = f"""
import socket
for label, addr in (("loopback", ("127.0.0.1", {port})), ("external", ("1.1.1.1", 53))):
    try:
        socket.create_connection(addr, timeout=2).close()
        print("CONNECTED", label)
    except OSError as exc:
        print("refused", label, type(exc).__name__)
try:
    print("RESOLVED", socket.getaddrinfo("example.com", 80))
except OSError as exc:
    print("no dns", type(exc).__name__)
"""
    try:
        result = run_python(code, timeout_s=8.0)
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()
    assert result.status == "ok", result.stderr
    assert "CONNECTED" not in result.stdout and "RESOLVED" not in result.stdout
    assert "refused loopback" in result.stdout and "refused external" in result.stdout


def test_environment_secret_is_unreadable(monkeypatch):
    monkeypatch.setenv("PHIFORGE_TEST_SECRET", "s3cr3t")
    code = f"""
import os
print(dict(os.environ))
for pid in (os.getppid(), 1, {os.getpid()}, "self"):
    try:
        print(pid, open(f"/proc/{{pid}}/environ", "rb").read())
    except OSError as exc:
        print(pid, "refused", type(exc).__name__)
"""
    result = run_python(code)
    assert result.status == "ok", result.stderr
    assert "s3cr3t" not in result.stdout + result.stderr
    assert "PHIFORGE_TEST_SECRET" not in result.stdout


def test_child_cannot_kill_its_parent_or_other_processes():
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        code = f"""
import os, signal
for pid in (os.getppid(), {os.getpid()}, {victim.pid}, -1):
    try:
        os.kill(pid, signal.SIGKILL)
        print("SENT", pid)
    except OSError as exc:
        print("refused", pid, type(exc).__name__)
"""
        result = run_python(code)
        assert result.status == "ok", result.stderr
        assert "SENT" not in result.stdout and result.stdout.count("refused") == 4
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_file_size_limit():
    code = "with open('big.bin', 'wb') as f:\n    for _ in range(100):\n        f.write(bytes(1 << 20))\n"
    result = run_python(code, max_file_mb=1)
    assert result.status == "error" and "File too large" in result.stderr


def test_work_dir_is_removed_afterwards():
    result = run_python("import os\nopen('left.txt', 'w').write('x')\nprint(os.getcwd())")
    assert result.status == "ok"
    work = Path(result.stdout.strip())
    assert work.name == "work" and not work.exists() and not work.parent.exists()


def test_run_tests_passes_correct_and_fails_wrong_solution():
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    assert run_tests("def add(a, b):\n    return a + b\n", tests).status == "ok"
    wrong = run_tests("def add(a, b):\n    return a - b\n", tests)
    assert wrong.status == "error" and "AssertionError" in wrong.stderr


def test_bad_limits_are_refused():
    with pytest.raises(PhiforgeError, match="timeout_s"):
        run_python("pass", timeout_s=0)
