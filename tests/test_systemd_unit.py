"""The agent's systemd unit (deploy/systemd/fedge-agent.service): systemd's own checks, and the settings it
gives the agent through the environment are ones a shipped profile takes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.profile import parse_profile

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "fedge-agent.service"
ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed (no systemd here)")


def _installed_copy(tmp: Path) -> Path:
    """The unit as installed, with ExecStart at this checkout's agent (systemd checks that it is executable)."""
    agent = Path(sys.executable).with_name("fedge-agent")
    copy = tmp / UNIT.name
    copy.write_text(UNIT.read_text().replace("/opt/fedge/bin/fedge-agent", str(agent)))
    return copy


@needs_systemd
def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    ran = subprocess.run([str(ANALYZE), "verify", str(_installed_copy(tmp_path))], capture_output=True, text=True,
                         check=False, timeout=60)
    assert ran.returncode == 0 and ran.stdout + ran.stderr == "", ran.stdout + ran.stderr


@needs_systemd
def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """systemd's exposure score (0 locked down .. 10 exposed): 'OK' is below 3."""
    ran = subprocess.run([str(ANALYZE), "security", "--offline=yes", str(_installed_copy(tmp_path))],
                         capture_output=True, text=True, check=False, timeout=60)
    score = re.search(r"Overall exposure level for fedge-agent.service: ([0-9.]+)", ran.stdout)
    assert score is not None, ran.stdout + ran.stderr
    assert float(score.group(1)) < 3.0, ran.stdout


def test_the_units_environment_is_read_by_the_profile(tmp_path: Path) -> None:
    """Every FEDGE__ variable the unit sets lands in the profile (a variable nothing reads would be a stub)."""
    password = tmp_path / "credentials" / "mqtt-password"
    password.parent.mkdir()
    password.write_text("s3cret\n")
    env = {}
    for name, value in re.findall(r"^Environment=(FEDGE__\w+)=(.*)$", UNIT.read_text(), re.MULTILINE):
        env[name] = value.replace("%d", str(password.parent))
    assert set(env) == {"FEDGE__STORAGE__DIRECTORY", "FEDGE__BROKER__PASSWORD_FILE"}
    shipped = ROOT / "edge_profiles" / "raspberry-pi-4.yaml"
    doc = yaml.safe_load(shipped.read_text())
    doc["storage"]["directory"] = "state-of-my-own"  # a user's profile: the unit still decides where state goes
    profile = parse_profile(yaml.safe_dump(doc), str(shipped), env=env)
    assert str(profile.storage.directory) == "/var/lib/fedge"
    assert str(profile.broker.password_file) == str(password)
