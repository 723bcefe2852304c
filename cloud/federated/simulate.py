"""``fedge-cloud fl simulate``: the same ServerApp and ClientApp on a simulated fleet, with Flower's own engine.

Each virtual device reads its own sample store (cloud/federated/fleet_data.py)
through the ClientApp's training code, unchanged; Flower's simulation engine
(Ray) runs them, two at a time on two cores. Without Ray (``pip install
fedge[simulation]``), the deployment engine runs instead: a SuperLink and one
real SuperNode per device on loopback.

``attackers`` devices can misbehave, to see what a strategy withstands: ``scale``
sends the device's update multiplied (a model-replacement attack), ``nan`` sends
NaN weights. It acts on the reply, after the device trained honestly.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from agent import process_tree
from agent.federated import processes
from agent.federated.client_app import train_with
from agent.model_store import ModelStore
from agent.protocol import Topics
from cloud.federated.fleet_data import DeviceData, FleetPlan, build_fleet
from cloud.federated.serve import serve
from cloud.federated.settings import FederatedSettings
from cloud.federated.superlink import SuperLink
from cloud.local.mosquitto import free_port
from cloud.registry import RoundRecord, open_registry
from cloud.zoo.tasks import DataOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attack:
    """How the first ``devices`` of the fleet misbehave: ``scale`` (times ``factor``) or ``nan``."""

    kind: str = ""
    devices: int = 0
    factor: float = 100.0

    @classmethod
    def parse(cls, text: str, devices: int) -> Attack:
        """``scale:100`` or ``nan``; ValueError naming what is wrong."""
        kind, _, value = text.partition(":")
        if kind not in ("scale", "nan"):
            raise ValueError(f"attack {text!r}: use scale:FACTOR or nan")
        try:
            factor = float(value) if value else 100.0
        except ValueError:
            raise ValueError(f"attack {text!r}: {value!r} is not a number") from None
        return cls(kind, devices, factor)

    def apply(self, device: int, reply: Message, sent: ArrayRecord) -> Message:
        if device >= self.devices or reply.has_error():
            return reply
        key, arrays = next(iter(reply.content.array_records.items()))
        attacked = {}
        for name, array in arrays.items():
            local, start = array.numpy(), sent[name].numpy()
            attacked[name] = np.full_like(local, np.nan) if self.kind == "nan" else start + self.factor * (local - start)
        reply.content.array_records[key] = ArrayRecord({n: Array(np.asarray(v)) for n, v in attacked.items()})
        return reply


def simulated_client_app(devices: list[DeviceData], node: dict[str, int | str], attack: Attack,
                         dp: bool) -> ClientApp:
    """One ClientApp for every virtual device: Flower's ``partition-id`` picks the device's store."""
    client = ClientApp(mods=[fixedclipping_mod] if dp else [])

    @client.train()
    def train(message: Message, context: Context) -> Message:
        device = int(context.node_config["partition-id"])
        config = {**node, "store-path": str(devices[device].store), "device-id": f"sim-{device}"}
        sent = next(iter(message.content.array_records.values()))
        snapshot = ArrayRecord({n: Array(np.array(a.numpy())) for n, a in sent.items()}) if attack.devices else sent
        return attack.apply(device, train_with(message, config, context.node_id), snapshot)

    return client


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def run_in_simulation(settings: FederatedSettings, devices: list[DeviceData], node: dict[str, int | str],
                      attack: Attack, report: Callable[[RoundRecord], None]) -> None:
    """Flower's simulation engine: virtual SuperNodes in Ray actors, two at a time on two cores."""
    from flwr.simulation import run_simulation

    from cloud.federated.server_app import server_app_for

    logging.getLogger("ray").setLevel(logging.WARNING)
    run_simulation(
        server_app=server_app_for(settings, report),
        client_app=simulated_client_app(devices, node, attack, settings.dp_noise > 0),
        num_supernodes=len(devices),
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"num_cpus": 2, "include_dashboard": False, "log_to_driver": False}},
    )


class SimulationError(ValueError):
    """The simulation cannot run as asked; the message says why."""


def simulate(settings: FederatedSettings, plan: FleetPlan, work_dir: Path, *, attack: Attack, engine: str,
             report: Callable[[RoundRecord], None], node: dict[str, int | str]) -> list[RoundRecord]:
    """Build the fleet's sample stores, run the rounds on the chosen engine, return the run's rounds."""
    store = ModelStore(Path(settings.store))
    for name in (settings.model_name, f"{settings.task}-cloud"):
        if not store.versions(settings.task, name):
            raise SimulationError(f"no {name} in the store {store.root}: train it first (fedge-cloud train --task"
                                  f" {settings.task} --model {name.rsplit('-', 1)[-1]})")
    if engine == "simulation" and not ray_installed():
        raise SimulationError("Flower's simulation engine needs Ray: pip install 'fedge[simulation]'")
    settings = settings if settings.run else settings.replace(run=uuid.uuid4().hex[:12])
    data = DataOptions(settings.train_size, settings.test_size, settings.data_seed)
    devices = build_fleet(store, settings.task, settings.model_name, plan, work_dir / "devices", data)
    log.info("simulated fleet: %s samples kept per device", [d.kept for d in devices])
    if engine == "deployment" or (engine == "auto" and not ray_installed()):
        run_on_loopback(settings, devices, node, work_dir, report)
    else:
        run_in_simulation(settings, devices, node, attack, report)
    with open_registry(settings.registry or None) as registry:
        return registry.rounds(settings.run)


def run_on_loopback(settings: FederatedSettings, devices: list[DeviceData], node: dict[str, int | str],
                    work_dir: Path, report: Callable[[RoundRecord], None]) -> None:
    """The deployment engine: a SuperLink and one real SuperNode per device, on free loopback ports."""
    link = SuperLink(work_dir / "superlink", free_port(), host="127.0.0.1")
    link.start()
    nodes = []
    try:
        for i, device in enumerate(devices):
            values = {**node, "store-path": str(device.store), "device-id": f"sim-{i}"}
            config = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v}" for k, v in values.items())
            nodes.append(processes.start([processes.flower_command("flower-supernode"), "--insecure", "--superlink",
                                          link.address, "--port", str(free_port()), "--node-config", config],
                                         work_dir / f"supernode-{i}.log"))
        serve(settings, link, None, Topics(), report)
    finally:
        for process in nodes:
            process_tree.stop(process)
        link.stop()
