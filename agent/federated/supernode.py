"""The device's Flower SuperNode, run only while the cloud's training window is open.

Idle, a SuperNode and its executor cost about 250 MB: more than the agent itself. So
the agent follows the retained window topic (agent/protocol/window.py): it starts the
SuperNode when a window opens and stops it with SIGTERM when the window closes, when
its ``until`` passes, or when the agent stops. The SuperNode is a separate process:
the agent's inference process never imports torch or Flower.

Its node config tells the ClientApp where this device's sample store is and what the
profile asks of training (agent/federated/client_app.py reads it).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from subprocess import Popen

import paho.mqtt.client as mqtt

from agent import process_tree
from agent.federated import processes
from agent.profile.schema import Profile
from agent.protocol import ProtocolError
from agent.protocol.window import TrainingWindow, decode_window

log = logging.getLogger(__name__)
CHECK_S = 30.0


def node_config(profile: Profile, store_path: Path) -> str:
    """``--node-config`` for this device: TOML values, strings quoted."""
    f = profile.federated
    values = {"store-path": str(store_path), "device-id": profile.device.id, "min-samples": f.min_samples,
              "local-epochs": f.local_epochs, "batch-size": f.batch_size}
    return " ".join(f'{key}="{value}"' if isinstance(value, str) else f"{key}={value}" for key, value in values.items())


def supernode_argv(profile: Profile, store_path: Path) -> list[str]:
    """The ``flower-supernode`` command line the profile describes (TLS and node authentication included)."""
    f = profile.federated
    assert f.server_address is not None  # the profile schema insists when federated is enabled
    argv = [processes.flower_command("flower-supernode"), "--superlink", f.server_address,
            "--port", str(f.clientapp_port), "--node-config", node_config(profile, store_path)]
    if f.root_certificates is None:
        argv.append("--insecure")
    else:
        argv += ["--root-certificates", str(profile.resolve_path(f.root_certificates))]
    if f.auth_key_file is not None:
        argv += ["--auth-supernode-private-key", str(profile.resolve_path(f.auth_key_file))]
    return argv


class SuperNode:
    """Starts and stops this device's SuperNode as training windows open and close.

    Windows are followed on a thread of its own: stopping a SuperNode takes seconds, and the
    window's handler runs on the uplink's network thread, which offloads must not wait for.
    """

    def __init__(self, profile: Profile, store_path: Path, log_file: Path) -> None:
        self.argv = supernode_argv(profile, store_path)  # MissingFlower now, not when a window opens
        self.log_file = log_file
        self.window = TrainingWindow(open=False)
        self._process: Popen[bytes] | None = None
        self._latest: TrainingWindow | None = None
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="fedge-supernode", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        process = self._process
        return process is not None and process.poll() is None

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def on_window(self, msg: mqtt.MQTTMessage) -> None:
        """The window topic's handler (on the uplink's network thread): hand the window to the follower."""
        try:
            window = decode_window(bytes(msg.payload))
        except ProtocolError as exc:
            log.warning("ignored a training window: %s", exc.message)
            return
        self.follow(window)

    def follow(self, window: TrainingWindow) -> None:
        """Run the SuperNode while ``window`` is open (returns at once; the follower thread acts)."""
        with self._changed:
            self._latest = window
            self._changed.notify()

    def stop(self) -> None:
        """Stop following windows and stop the SuperNode if it runs."""
        with self._changed:
            self._stopping = True
            self._changed.notify()
        self._thread.join(30)

    def _loop(self) -> None:
        while True:
            with self._changed:
                # while a window is open, look again at its end, and every CHECK_S for a SuperNode that died
                timeout = None if not self.window.is_open() else \
                    min(CHECK_S, max(0.0, (self.window.until or math.inf) - time.time()))
                if self._latest is None and not self._stopping:
                    self._changed.wait(timeout)
                latest, self._latest, stopping = self._latest, None, self._stopping
            if stopping:
                self._stop_process()
                return
            if latest is not None:
                self.window = latest
            if self.window.is_open():
                self._start_process()
            else:
                self._stop_process()

    def _start_process(self) -> None:
        if self.running:
            return
        if self._process is not None:
            log.warning("the Flower SuperNode exited with %s while the window is open; starting it again (log %s)",
                        self._process.returncode, self.log_file)
        self._process = processes.start(self.argv, self.log_file)
        log.info("training window %s open: started the Flower SuperNode (pid %s, log %s)", self.window.run or "-",
                 self._process.pid, self.log_file)

    def _stop_process(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process_tree.stop(process)  # running until it is gone
            log.info("training window %s closed: stopped the Flower SuperNode (pid %s)", self.window.run or "-",
                     process.pid)
        self._process = None
