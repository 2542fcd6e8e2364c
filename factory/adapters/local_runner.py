"""Supervisor of one local-backend job: `python -m factory.adapters.local_runner <job dir>`.

It detaches from whoever started it (a Celery worker may die or restart at any time), waits for
free GPU slots, runs the job's script with CUDA_VISIBLE_DEVICES set to the slots it holds, enforces
the time limit, honours a cancel request and records the outcome. All of its state is in files in
the job directory, written atomically, so any process can read it and a new runner can pick up:

- `spec.json`   what to run (written once by the adapter)
- `secrets.json` the job's secrets, if it has any (0600; added to its environment, nowhere else)
- `state.json`  queued | running | succeeded | failed | cancelled | timed_out, with times and exit code
- `output.log`  stdout and stderr of the script
- `runner.lock` held (flock) by the live runner; free means no runner is alive
- `cancel`      present when cancellation was requested

The runner never starts the script twice: a state of `running` found at start-up means an earlier
runner died after starting it, and the job is recorded as failed instead.

The job directory is the portal's, not the job's: a runner started by a root worker runs the script
as the spec's unprivileged user (`run_as`), in a working directory of its own elsewhere (`work_dir`)
and with an environment made from nothing but the spec, so that the job cannot read the state of
this or any other job, the GPU slot table, nor anything of the worker's (database, broker, secrets).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

POLL_SECONDS = 0.2
KILL_GRACE_SECONDS = 5.0
TERMINAL = {"succeeded", "failed", "cancelled", "timed_out"}
# All a job (and its runner) gets besides its own variables: nothing is taken from the worker's
# environment, which holds the portal's secrets.
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
SECRETS_FILE = "secrets.json"


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def write_json_atomic(path: Path, data: dict, *, mode: int = 0o644) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def own_dir(path: Path, mode: int) -> None:
    """Make `path` a directory of this user's with exactly `mode`, missing parents likewise. Refuses
    a path that is someone else's or a symlink: in a shared place such as /tmp another user could
    have made it first."""
    if not path.parent.exists():
        own_dir(path.parent, mode)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(f"{path} is not a directory owned by uid {os.geteuid()}")
    if stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)


def runner_alive(job_dir: Path) -> bool:
    fd = try_lock(job_dir / "runner.lock")
    if fd is None:
        return True
    os.close(fd)
    return False


class SlotTable:
    """GPU slots of one GPU type on one local cluster: {slot index: dispatch key}, under an flock."""

    def __init__(self, slots_dir: Path, gpu_type: str, capacity: int) -> None:
        self.path = slots_dir / f"{gpu_type}.json"
        self.lock_path = slots_dir / f"{gpu_type}.lock"
        # {slot index: reason}: slots the portal took out of service (a failed simulated GPU).
        self.drained_path = slots_dir / f"{gpu_type}.drained.json"
        self.capacity = capacity
        slots_dir.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self):
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            table = {int(k): v for k, v in read_json(self.path).items()}
            yield table
            write_json_atomic(self.path, {str(k): v for k, v in sorted(table.items())})
        finally:
            os.close(fd)

    def claim(self, uid: str, count: int, jobs_dir: Path) -> list[int] | None:
        with self.locked() as table:
            for slot, holder in list(table.items()):
                if holder != uid and not runner_alive(jobs_dir / holder):
                    del table[slot]  # its runner is gone: the slot is free again
            mine = sorted(s for s, h in table.items() if h == uid)
            if len(mine) >= count:
                return mine[:count]
            out = self.drained()
            free = [s for s in range(self.capacity) if s not in table and s not in out]
            if len(free) < count - len(mine):
                return None
            for slot in free[: count - len(mine)]:
                table[slot] = uid
            return sorted(s for s, h in table.items() if h == uid)

    def release(self, uid: str) -> None:
        with self.locked() as table:
            for slot in [s for s, h in table.items() if h == uid]:
                del table[slot]

    def in_use(self) -> int:
        return len(read_json(self.path))

    def holders(self) -> dict[int, str]:
        return {int(k): v for k, v in read_json(self.path).items()}

    def drained(self) -> dict[int, str]:
        return {int(k): v for k, v in read_json(self.drained_path).items()}

    def set_drained(self, slot: int, reason: str | None) -> None:
        """Take a slot out of service (a reason) or put it back (None); a job holding it keeps it."""
        with self.locked():
            out = {str(k): v for k, v in self.drained().items()}
            if reason is None:
                out.pop(str(slot), None)
            else:
                out[str(slot)] = reason
            write_json_atomic(self.drained_path, out)


class Runner:
    def __init__(self, job_dir: Path) -> None:
        self.job_dir = job_dir
        self.spec = json.loads((job_dir / "spec.json").read_text())
        self.state_path = job_dir / "state.json"
        self.key = job_dir.name  # holds the GPU slots; names the directory other runners check
        self.state = read_json(self.state_path) or {"state": "queued"}
        self.slots = SlotTable(Path(self.spec["slots_dir"]), self.spec["gpu_type"], self.spec["slots_total"])

    def save(self, **changes) -> None:
        self.state.update(changes)
        write_json_atomic(self.state_path, self.state)

    @property
    def cancel_requested(self) -> bool:
        return (self.job_dir / "cancel").exists()

    def run(self) -> None:
        current = self.state.get("state")
        if current in TERMINAL:
            return
        if current == "running":
            self.finish(
                "failed", reason="the local runner stopped while the job was running", platform_fault=True
            )
            return
        slots = self.wait_for_slots()
        if slots is None:
            self.finish("cancelled", reason="cancelled while queued")
            return
        try:
            self.execute(slots)
        finally:
            self.slots.release(self.key)

    def wait_for_slots(self) -> list[int] | None:
        needed = self.spec["gpu_count"]
        while not self.cancel_requested:
            slots = self.slots.claim(self.key, needed, self.job_dir.parent)
            if slots is not None:
                return slots
            reason = (
                f"waiting for {needed} free {self.spec['gpu_type']} slot(s): "
                f"{self.slots.in_use()} of {self.slots.capacity} in use"
            )
            if self.state.get("reason") != reason:
                self.save(state="queued", reason=reason)
            time.sleep(POLL_SECONDS)
        return None

    def execute(self, slots: list[int]) -> None:
        user = self.user()
        work_dir = self.work_dir(user)
        env = {
            **BASE_ENV,
            **self.spec["env"],
            **read_json(self.job_dir / SECRETS_FILE),
            "HOME": str(work_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(str(s) for s in slots),
            "FACTORY_JOB_UID": self.spec["uid"],
            "FACTORY_JOB_NAME": self.spec["name"],
        }
        # The command is one argument of bash -c and the variables are the environment: nothing of
        # the spec is ever spliced into a command line.
        command = (self.job_dir / "script.sh").read_text()
        # Done in the child, in this order: setgroups([]), setgid, setuid, then the exec.
        drop = {"user": user["uid"], "group": user["gid"], "extra_groups": []} if user else {}
        # Recorded before the script starts: a runner that finds "running" never starts it again.
        self.save(state="running", reason="", started_at=now_iso(), slots=slots)
        # The log is opened here, so the job writes it through its stdout without being able to
        # open anything in the job directory.
        with open(self.job_dir / "output.log", "ab", buffering=0) as out:
            proc = subprocess.Popen(
                ["/bin/bash", "-c", command],
                cwd=work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **drop,
            )
        self.save(pid=proc.pid)
        deadline = time.monotonic() + self.spec["time_limit_seconds"]
        while proc.poll() is None:
            if self.cancel_requested:
                self.stop(proc)
                self.finish("cancelled", exit_code=proc.returncode, reason="cancelled while running")
                return
            if time.monotonic() >= deadline:
                self.stop(proc)
                self.finish("timed_out", exit_code=proc.returncode, reason="time limit reached")
                return
            time.sleep(POLL_SECONDS)
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        self.finish("succeeded" if code == 0 else "failed", exit_code=code)

    def user(self) -> dict | None:
        """The unprivileged user to run the job as, or None to run it as this process's own user,
        which only a runner that is not root may do."""
        user = self.spec.get("run_as")
        if os.geteuid() != 0:
            return None  # switching users takes root; the job runs as the worker's user
        if not user or user["uid"] == 0 or user["gid"] == 0:
            raise PermissionError("refusing to run a job as root: its spec names no unprivileged user")
        return user

    def work_dir(self, user: dict | None) -> Path:
        """The job's own working directory, created for its user; its parent is this process's,
        so only this process can put anything there (no link planted for a root chown to follow)."""
        if "work_dir" not in self.spec:  # written before working directories left the job dir
            work_dir = self.job_dir / "work"
        else:
            work_dir = Path(self.spec["work_dir"])
            own_dir(work_dir.parent, 0o711)
        work_dir.mkdir(mode=0o700, exist_ok=True)
        if user:
            os.chown(work_dir, user["uid"], user["gid"], follow_symlinks=False)
        return work_dir

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM the whole process group, then SIGKILL what is left after a grace period."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers that ignored SIGTERM

    def finish(
        self, state: str, *, exit_code: int | None = None, reason: str = "", platform_fault: bool = False
    ) -> None:
        if exit_code is not None and exit_code < 0:
            exit_code = 128 - exit_code
        self.save(
            state=state, exit_code=exit_code, reason=reason, ended_at=now_iso(), platform_fault=platform_fault
        )


def main(argv: list[str]) -> int:
    job_dir = Path(argv[1]).resolve()
    if os.fork() != 0:
        return 0  # the caller reaps this parent at once; the child lives on, detached
    os.setsid()
    os.umask(0o077)  # state, logs and the job's files are for their owner alone
    lock_fd = try_lock(job_dir / "runner.lock")
    if lock_fd is None:
        return 0  # another runner is alive for this job
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    log_fd = os.open(job_dir / "runner.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    runner = None
    try:
        runner = Runner(job_dir)
        runner.run()
    except Exception as exc:
        if runner is not None:
            runner.finish("failed", reason=f"local runner error: {exc}", platform_fault=True)
        raise
    finally:
        os.close(lock_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
