"""The deployment files are the ones that work: the systemd unit, its configuration, the kernel settings.

deploy/haproxy.cfg is run as shipped by tests/attacks/test_haproxy.py.
"""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from websockets.sync.client import connect

from support import ServerProcess, proxy_v2, tcp, token

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
UNIT = DEPLOY / "guarded-ws.service"
INSTALLED_BINARY = "/opt/guarded-ws/bin/guarded-ws"
INSTALLED_CONFIG = "/etc/guarded-ws/guarded-ws.toml"


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(UNIT)
    return unit


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        raise AssertionError("systemd-analyze is missing: `make test` installs Debian's systemd package")
    return path


def test_the_unit_passes_systemd_analyze_verify_without_a_warning(tmp_path: Path) -> None:
    # The installed binary does not exist here: point ExecStart at this checkout's, nothing else changes.
    binary = Path(sys.executable).with_name("guarded-ws")
    unit = tmp_path / "guarded-ws.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_BINARY, str(binary)))
    result = subprocess.run([_systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_the_unit_is_hardened_and_sized() -> None:
    service = _unit()["Service"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "DynamicUser": "yes",
        "CapabilityBoundingSet": "",
        "LimitNOFILE": "1048576",
        "KillSignal": "SIGTERM",
    }.items():
        assert service.get(key) == value, key
    # systemd must wait for the drain: drain_timeout (10 s) plus close_timeout (5 s).
    assert int(service["TimeoutStopSec"].rstrip("s")) > 15


def test_the_unit_command_line_serves_with_the_shipped_configuration(tmp_path: Path) -> None:
    """ExecStart as systemd runs it (%d: the credentials directory), on loopback instead of 0.0.0.0."""
    argv = shlex.split(_unit()["Service"]["ExecStart"])
    assert argv[:2] == [INSTALLED_BINARY, "serve"]
    (tmp_path / "secret").write_text("a-secret-from-loadcredential-0123456789\n")
    args = [a.replace("%d", str(tmp_path)).replace(INSTALLED_CONFIG, str(DEPLOY / "guarded-ws.toml")) for a in argv[2:]]
    server = ServerProcess(
        *args,
        "--host", "127.0.0.1", "--metrics-host", "127.0.0.1",
        "--set", "server.trusted_proxies=127.0.0.1/32",  # the test plays HAProxy
        secret=None,
    )  # fmt: skip
    try:
        sock = tcp(server.port)
        sock.sendall(proxy_v2(("10.1.2.3", 50000)))
        with connect(f"ws://127.0.0.1:{server.port}/ws", sock=sock, compression=None, open_timeout=5) as ws:
            ws.send(
                token("alice", key="a-secret-from-loadcredential-0123456789", audience="ws.example.com")
            )
            assert json.loads(ws.recv(timeout=5)) == {"type": "authenticated", "subject": "alice"}
    finally:
        server.kill()


def test_every_kernel_setting_exists_and_is_a_number() -> None:
    settings = {}
    for line in (DEPLOY / "sysctl.d" / "60-guarded-ws.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.split()
    assert {"net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog", "net.ipv4.tcp_syncookies"} <= settings.keys()
    for key, values in settings.items():
        assert Path("/proc/sys", *key.split(".")).exists(), key
        assert values and all(v.isdigit() for v in values), key
