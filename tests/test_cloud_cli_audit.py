"""`fedge-cloud` used as a new user would: wrong inputs, Ctrl-C, broken files; each a one-line error and the
documented exit code, never a traceback. Real broker, real files, real processes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from agent.exit_codes import ExitCode
from agent.protocol import Topics
from agent.updates.release import parse_release
from cloud.local.mosquitto import Mosquitto, free_port
from cloud.registry import ModelState, open_registry
from tests.mqtt_helpers import Inbox, client, subscribe
from tests.release_support import NAME, TASK, cloud, linear_cloud_store, make_cloud

GROUP = "lab"


def _cloud_process(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """`fedge-cloud ARGS` in its own process group, as a terminal would start it (Ctrl-C reaches the group)."""
    return subprocess.Popen([sys.executable, "-m", "cloud.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def _ctrl_c(process: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGINT to the whole process group, as a terminal's Ctrl-C; the output once it exits."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=60)


def test_ctrl_c_during_a_rollout_rolls_the_canary_back(tmp_path: Path, broker: Mosquitto) -> None:
    side = make_cloud(tmp_path)  # signed v1, v2, v3
    registry_file = tmp_path / "registry.db"
    with open_registry(registry_file) as registry:
        registry.add_model(TASK, NAME, 1, ModelState.ACTIVE)
        registry.record_heartbeat("dev-a", {"kind": "pi", "group": GROUP, "models": {TASK: "1"}}, time.time())
    release_topic = Topics().release(TASK, GROUP)
    with client(broker, "watch") as watch:
        inbox = Inbox(watch)
        subscribe(watch, release_topic)
        rollout = _cloud_process("rollout", "--task", TASK, "--name", NAME, "--version", "2", "--group", GROUP,
                                 "--timeout", "600", "--broker", broker.url, "--store", str(side.store.root),
                                 "--registry", str(registry_file), "--key", str(side.private_key), cwd=tmp_path)
        try:
            canary = parse_release(bytes(inbox.get(timeout=60).payload), release_topic)
            assert (canary.action, canary.devices, canary.manifest.version) == ("install", ["dev-a"], 2)
        finally:
            out, err = _ctrl_c(rollout)  # nobody reports on the canary: the rollout is waiting
        back = parse_release(bytes(inbox.get(timeout=10).payload), release_topic)
    assert rollout.returncode == ExitCode.INTERRUPTED, err
    assert "Traceback" not in err
    assert "rolled back" in out and "interrupted" in out
    assert (back.action, back.devices, back.manifest.version) == ("rollback", None, 1)  # the group goes back
    with open_registry(registry_file) as registry:
        record = registry.model(TASK, NAME, 2)
        assert record is not None and record.state is ModelState.RETIRED  # not left "canary"
        reason = registry.model_history(TASK, NAME)[-1].reason
        assert "interrupted" in reason and "failed" not in reason, reason  # it was never judged


def _lines_until(stream: IO[str], wanted: str) -> tuple[threading.Event, list[str]]:
    """Read ``stream`` to its end in a thread; the event is set once a line holds ``wanted``."""
    seen, lines = threading.Event(), []

    def read() -> None:
        for line in stream:
            lines.append(line)
            if wanted in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    return seen, lines


def test_a_second_ctrl_c_while_the_canary_is_undone_is_ignored(tmp_path: Path, broker: Mosquitto) -> None:
    side = make_cloud(tmp_path)
    registry_file = tmp_path / "registry.db"
    with open_registry(registry_file) as registry:
        registry.add_model(TASK, NAME, 1, ModelState.ACTIVE)
        registry.record_heartbeat("dev-a", {"kind": "pi", "group": GROUP, "models": {TASK: "1"}}, time.time())
    release_topic = Topics().release(TASK, GROUP)
    assert broker.pid is not None
    with client(broker, "watch") as watch:
        inbox = Inbox(watch)
        subscribe(watch, release_topic)
        rollout = _cloud_process("rollout", "--task", TASK, "--name", NAME, "--version", "2", "--group", GROUP,
                                 "--timeout", "600", "--json", "--broker", broker.url, "--store", str(side.store.root),
                                 "--registry", str(registry_file), "--key", str(side.private_key), cwd=tmp_path)
        assert rollout.stderr is not None and rollout.stdout is not None
        undoing, err = _lines_until(rollout.stderr, "interrupted: undoing the canary, please wait")
        try:
            inbox.get(timeout=60)  # the canary release: the rollout waits for its report
            os.kill(broker.pid, signal.SIGSTOP)  # the broker holds the undo's publish ...
            try:
                os.killpg(rollout.pid, signal.SIGINT)
                assert undoing.wait(30), "".join(err)
                os.killpg(rollout.pid, signal.SIGINT)  # ... while a second Ctrl-C comes
                time.sleep(0.5)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            out = rollout.stdout.read()
            rollout.wait(60)
        finally:
            if rollout.poll() is None:
                rollout.kill()
        back = parse_release(bytes(inbox.get(timeout=10).payload), release_topic)
    assert rollout.returncode == ExitCode.INTERRUPTED, "".join(err)
    assert "Traceback" not in "".join(err)
    assert (back.action, back.manifest.version) == ("rollback", 1)  # the undo went out whole
    assert json.loads(out)["interrupted"] is True and json.loads(out)["outcome"] == "rolled back"
    with open_registry(registry_file) as registry:
        record = registry.model(TASK, NAME, 2)
        assert record is not None and record.state is ModelState.RETIRED


def test_ctrl_c_stops_serve_and_its_workers_without_a_traceback(tmp_path: Path, broker: Mosquitto) -> None:
    store = linear_cloud_store(tmp_path / "store")
    with client(broker, "watch") as watch:
        statuses = Inbox(watch)
        subscribe(watch, Topics().cloud_status)
        serve = _cloud_process("serve", "--broker", broker.url, "--workers", "2", "--store", str(store),
                               "--registry", str(tmp_path / "registry.db"), cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while json.loads(statuses.get(timeout=60).payload).get("workers_alive") != 2:
                assert time.monotonic() < deadline, "the workers never reported"
        finally:
            _, err = _ctrl_c(serve)
    assert serve.returncode == ExitCode.OK, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def _sigint_disposition(pid: int) -> str:
    """What the process does on SIGINT: "default" (a Python process sets it up at start), "caught" or "ignored"."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line)
    bit = 1 << (signal.SIGINT - 1)
    return "ignored" if int(fields["SigIgn"], 16) & bit else "caught" if int(fields["SigCgt"], 16) & bit else "default"


def test_ctrl_c_while_the_workers_load_prints_no_traceback(tmp_path: Path, broker: Mosquitto) -> None:
    """A terminal's Ctrl-C reaches the workers too, however early: they leave stopping to their coordinator."""
    store = linear_cloud_store(tmp_path / "store")
    serve = _cloud_process("serve", "--broker", broker.url, "--workers", "2", "--store", str(store),
                           "--registry", str(tmp_path / "registry.db"), cwd=tmp_path)
    assert serve.stderr is not None
    started, err = _lines_until(serve.stderr, "started 2 workers")
    try:
        assert started.wait(60), "".join(err)
        workers = [int(pid) for pid in re.findall(r"\d+", "".join(err).split("started 2 workers")[1].splitlines()[0])]
        deadline = time.monotonic() + 30
        while any(_sigint_disposition(pid) == "default" for pid in workers):  # Python is up; they import and load
            assert time.monotonic() < deadline, "".join(err)
            time.sleep(0.01)
        for pid in workers:
            os.kill(pid, signal.SIGINT)  # Ctrl-C's share, while they load
        while "".join(err).count(" INFO serving ") < 2:
            assert time.monotonic() < deadline, "".join(err)
            time.sleep(0.05)
        assert all(_alive(pid) for pid in workers), "".join(err)  # the same workers serve: none stopped or died
        assert [_sigint_disposition(pid) for pid in workers] == ["ignored"] * 2  # loading did not turn it back on
        os.killpg(serve.pid, signal.SIGINT)  # and a Ctrl-C once they serve stops everything
        serve.wait(60)
    finally:
        if serve.poll() is None:
            serve.kill()
    time.sleep(0.5)  # the reader thread takes the last lines
    assert serve.returncode == ExitCode.OK, "".join(err)
    assert "Traceback" not in "".join(err) and "KeyboardInterrupt" not in "".join(err), "".join(err)


def test_serve_says_an_unreachable_registry_is_a_service_problem(tmp_path: Path, broker: Mosquitto) -> None:
    store = linear_cloud_store(tmp_path / "store")
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/test"  # nothing listens there
    ran = cloud("serve", "--broker", broker.url, "--workers", "1", "--store", str(store), "--registry", nobody)
    assert ran.returncode == ExitCode.UNAVAILABLE, ran.stderr  # exit 3, as for the broker: not a bad config (2)
    assert "cannot connect to the PostgreSQL registry" in ran.stderr and "Traceback" not in ran.stderr


@pytest.mark.parametrize("flag", ["--train-size", "--test-size"])
def test_train_refuses_an_empty_data_set_by_name(tmp_path: Path, flag: str) -> None:
    ran = cloud("train", "--task", "mnist1d", "--model", "edge", "--epochs", "1", flag, "0", "--no-progress",
                "--store", str(tmp_path / "store"))
    assert (ran.returncode, ran.stderr) == (ExitCode.INVALID_INPUT, f"fedge-cloud train: {flag} must be at least 1\n")
    assert not (tmp_path / "store").exists()  # nothing trained, nothing stored


@pytest.mark.parametrize("content", [b"garbage\n", b""])
def test_publishing_a_file_that_is_no_onnx_model_is_refused_by_name(tmp_path: Path, content: bytes) -> None:
    side = make_cloud(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(content)
    ran = cloud("models", "publish", "--task", TASK, "--name", NAME, "--onnx", str(junk), "--key",
                str(side.private_key), "--store", str(side.store.root), "--registry", str(tmp_path / "registry.db"))
    assert ran.returncode == ExitCode.INVALID_INPUT, ran.stderr
    assert ran.stderr.startswith(f"fedge-cloud models publish: {junk}: not an ONNX model"), ran.stderr
    assert side.store.versions(TASK, NAME) == [1, 2, 3]  # no version added
    assert sorted(p.name for p in (side.store.root / TASK / NAME).iterdir()) == ["1", "2", "3"]  # no staging left


def test_a_release_can_be_read_by_other_users_as_the_umask_allows(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        side = make_cloud(tmp_path)
    finally:
        os.umask(old)
    release = side.stored(1).directory
    assert release.stat().st_mode & 0o777 == 0o755  # a `serve` running as another user can read its models


def test_a_rollout_run_twice_says_the_group_runs_the_version_already(tmp_path: Path, broker: Mosquitto) -> None:
    side = make_cloud(tmp_path)
    registry_file = tmp_path / "registry.db"
    with open_registry(registry_file) as registry:
        registry.add_model(TASK, NAME, 2, ModelState.ACTIVE)  # the first run promoted v2 ...
        registry.record_heartbeat("dev-a", {"kind": "pi", "group": GROUP, "models": {TASK: "2"}}, time.time())
    again = cloud("rollout", "--task", TASK, "--name", NAME, "--version", "2", "--group", GROUP, "--broker", broker.url,
                  "--store", str(side.store.root), "--registry", str(registry_file), "--key", str(side.private_key))
    assert again.returncode == ExitCode.INVALID_INPUT, again.stderr
    assert "already runs v2" in again.stderr and "nothing to roll out" in again.stderr, again.stderr
    assert "none is active" not in again.stderr  # v2 is: the old message said otherwise


def test_validate_names_the_store_serve_would_use_and_what_it_would_serve(tmp_path: Path) -> None:
    linear_cloud_store(tmp_path / "etc" / "models")
    config = tmp_path / "etc" / "cloud.yaml"
    config.write_text("store: models\n")  # relative to the config file, as serve reads it
    ran = cloud("serve", "--config", str(config), "--validate")
    assert ran.returncode == ExitCode.OK, ran.stderr
    assert f"store {tmp_path / 'etc' / 'models'}: mnist1d-cloud v1" in ran.stdout, ran.stdout
    empty = cloud("serve", "--validate", "--store", str(tmp_path / "nothing"))
    assert empty.returncode == ExitCode.OK  # a config can be checked where the models are not
    assert "serve would not start" in empty.stderr and "holds no <task>-cloud model" in empty.stderr
    assert "fedge-cloud train --task" in empty.stderr  # and how to get one


def test_train_into_a_store_it_cannot_write_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    store = tmp_path / "a-file" / "store"
    ran = cloud("train", "--task", "digits", "--model", "edge", "--epochs", "1", "--no-progress", "--store", str(store))
    assert ran.returncode == ExitCode.INVALID_INPUT, ran.stderr
    assert ran.stderr == f"fedge-cloud train: cannot write the store {store}: Not a directory: {store}\n"
    assert ran.stdout == ""  # nothing was trained


def test_acl_into_a_directory_it_cannot_write_says_so(tmp_path: Path) -> None:
    devices = tmp_path / "devices.yaml"
    devices.write_text("devices: [pi-1]\nworkers: [worker]\ncoordinators: [coordinator]\n")
    (tmp_path / "a-file").write_text("")
    ran = cloud("acl", "--devices", str(devices), "--out", str(tmp_path / "a-file" / "out"))
    assert ran.returncode == ExitCode.INVALID_INPUT, ran.stderr
    assert ran.stderr.startswith(f"fedge-cloud acl: cannot write to {tmp_path / 'a-file' / 'out'}: Not a directory")



def test_keys_into_a_path_that_cannot_be_made_and_a_registry_that_is_a_directory_say_so(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    ran = cloud("keys", "init", "--dir", str(tmp_path / "a-file" / "keys"))
    assert ran.returncode == ExitCode.INVALID_INPUT, ran.stderr
    assert ran.stderr.startswith("fedge-cloud keys init: cannot write the key pair: Not a directory"), ran.stderr
    looked = cloud("devices", "--registry", str(tmp_path))
    assert looked.returncode == ExitCode.INVALID_INPUT, looked.stderr
    assert f"registry {tmp_path} is a directory" in looked.stderr and "registry.db" in looked.stderr, looked.stderr

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has exited


def test_workers_stop_when_their_coordinator_is_killed(tmp_path: Path, broker: Mosquitto) -> None:
    """kill -9 (or the OOM killer) on serve must not leave workers taking requests that nobody reports on."""
    store = linear_cloud_store(tmp_path / "store")
    log = tmp_path / "serve.log"
    with log.open("w") as log_file:
        serve = subprocess.Popen([sys.executable, "-m", "cloud.cli", "serve", "--broker", broker.url, "--workers", "2",
                                  "--store", str(store), "--registry", str(tmp_path / "registry.db")],
                                 cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not (found := re.search(r"started 2 workers \(pids \[(\d+), (\d+)\]\)", log.read_text())):
            assert time.monotonic() < deadline and serve.poll() is None, log.read_text()
            time.sleep(0.1)
        workers = [int(found[1]), int(found[2])]
        serve.kill()
        serve.wait(10)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers), "workers outlived their coordinator"
    finally:
        for pid in workers:  # what this test started, by pid
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
