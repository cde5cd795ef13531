"""deploy/compose.yaml without Docker: its services' commands, health checks and config run as processes.

The trial stack is the daemon (deploy/Dockerfile's ENTRYPOINT + the service's command) next to the LMS
sandbox and the ERPNext fake started by the compose commands themselves (bundled demo data). Here the
service names become 127.0.0.1, the fixed ports free ones and `/tmp/demo`, `/var/lib/feesync` temp
folders; nothing else in the commands or the inline config is changed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from typing import Any

import pytest

from sync.config import load_settings
from tests.test_container import ROOT, Image, free_port

COMPOSE = ROOT / "deploy" / "compose.yaml"


# --- a small YAML reader for the subset compose.yaml uses (no PyYAML in the project) -----------------
def load_yaml(text: str) -> Any:
    """Block mappings and sequences, `|` literal blocks, JSON-style flow lists, plain and quoted scalars."""
    raw = text.splitlines()

    def skip(i: int) -> int:
        while i < len(raw) and (not raw[i].strip() or raw[i].lstrip().startswith("#")):
            i += 1
        return i

    def ind(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    def scalar(s: str) -> Any:
        s = s.strip()
        if s.startswith(("[", "{")):
            return json.loads(s)
        if s[:1] in "\"'":
            return s[1:-1]
        if s in ("", "~", "null"):
            return None
        if re.fullmatch(r"-?\d+", s):
            return int(s)
        return {"true": True, "false": False}.get(s, s)

    def block(i: int, indent: int) -> tuple[Any, int]:
        if not raw[i].lstrip().startswith("- "):
            return mapping(i, indent)
        out = []
        while i < len(raw) and ind(raw[i]) == indent and raw[i].lstrip().startswith("- "):
            item = raw[i].lstrip()[2:]
            if re.match(r"[\w.-]+:( |$)", item):   # "- key: value" opens a mapping
                raw[i] = " " * (indent + 2) + item
                value, i = mapping(i, indent + 2)
            else:
                value, i = scalar(item), skip(i + 1)
            out.append(value)
        return out, i

    def mapping(i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(raw) and ind(raw[i]) == indent and not raw[i].lstrip().startswith("- "):
            key, _, rest = raw[i].strip().partition(":")
            key, rest = key.strip().strip("\"'"), rest.strip()
            if rest == "|":
                j, body = i + 1, []
                while j < len(raw) and (not raw[j].strip() or ind(raw[j]) > indent):
                    body.append(raw[j])
                    j += 1
                cut = min(ind(line) for line in body if line.strip())
                out[key] = "\n".join(line[cut:] for line in body).rstrip("\n") + "\n"
                i = skip(j)
            elif rest:
                out[key], i = scalar(rest), skip(i + 1)
            else:
                j = skip(i + 1)
                nested = j < len(raw) and (ind(raw[j]) > indent or
                                           (ind(raw[j]) == indent and raw[j].lstrip().startswith("- ")))
                out[key], i = block(j, ind(raw[j])) if nested else (None, j)
        return out, i

    start = skip(0)
    return block(start, ind(raw[start]))[0]


def test_the_yaml_reader_reads_what_compose_yaml_uses():
    """Nested maps, lists of maps, flow lists, literal blocks and a bare key read as PyYAML would."""
    doc = load_yaml('a:\n  b: ["x", "y: z"]\n  c:\n    - k: 1\n      t: "/p"\n    - plain:v\n'
                    '  d: |\n    line 1\n\n    [sec]\n  e:\n')
    assert doc == {"a": {"b": ["x", "y: z"], "c": [{"k": 1, "t": "/p"}, "plain:v"],
                         "d": "line 1\n\n[sec]\n", "e": None}}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE.read_text())


def test_compose_builds_the_image_from_deploy_dockerfile_and_wires_the_daemon_to_both_sandboxes(compose):
    """Three services from deploy/Dockerfile; the daemon waits for healthy sandboxes, keeps state in a volume."""
    img = Image()
    services = compose["services"]
    assert set(services) == {"lms", "erpnext", "feesync"}
    for svc in services.values():
        assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
    daemon = services["feesync"]
    assert daemon["depends_on"] == {"lms": {"condition": "service_healthy"},
                                    "erpnext": {"condition": "service_healthy"}}
    volume, _, target = daemon["volumes"][0].partition(":")
    assert volume in compose["volumes"] and [target] == json.loads(img.last("VOLUME"))
    assert daemon["configs"] == [{"source": "feesync-toml", "target": img.env()["FEESYNC_CONFIG"]}]
    assert float(daemon["stop_grace_period"].rstrip("s")) > 10, "the daemon's own grace is 10 s"
    assert "healthcheck" not in daemon, "the image's HEALTHCHECK (feesync check --liveness) applies"


def test_the_trial_stack_runs_syncs_demo_data_is_healthy_and_stops_cleanly(compose, tmp_path, monkeypatch):
    """Sandboxes from their compose commands, the daemon from the image + inline config: healthy, pushing, exit 0."""
    img = Image()
    services = compose["services"]
    ports = {"lms": (8765, free_port()), "erpnext": (8000, free_port())}
    secrets = {k: str(v) for k, v in services["feesync"]["environment"].items()}
    env = img.run_env(tmp_path / "feesync.toml", secrets=secrets)

    def local(text: str, svc: str | None = None) -> str:
        for name, (fixed, port) in ports.items():
            text = text.replace(f"http://{name}:{fixed}", f"http://127.0.0.1:{port}")
            if name == svc:
                text = text.replace(f"--port {fixed}", f"--port {port}").replace(f"', {fixed})", f"', {port})")
        return text.replace("--host 0.0.0.0", "--host 127.0.0.1")

    children: dict[str, subprocess.Popen] = {}
    try:
        for name in ("lms", "erpnext"):
            svc = services[name]
            argv = svc["entrypoint"] + [local(c, name).replace("/tmp/demo", str(tmp_path / f"demo-{name}"))
                                        for c in svc["command"]]
            assert argv[:2] == ["sh", "-c"]
            children[name] = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name in ("lms", "erpnext"):
            test = [local(c, name) for c in services[name]["healthcheck"]["test"]]
            assert test[0] == "CMD"
            deadline = time.monotonic() + 30
            while subprocess.run(img.resolve(test[1:], env), env=env, capture_output=True).returncode != 0:
                assert children[name].poll() is None, children[name].stderr.read().decode()
                assert time.monotonic() < deadline, f"{name} never became healthy"
                time.sleep(0.2)

        volume = tmp_path / "volume"   # the feesync-state volume
        volume.mkdir()
        content = local(compose["configs"]["feesync-toml"]["content"]).replace("/var/lib/feesync", str(volume))
        content = content.replace('status_listen = "127.0.0.1:8787"', f'status_listen = "127.0.0.1:{free_port()}"')
        (tmp_path / "feesync.toml").write_text(content)
        for key in [k for k in os.environ if k.startswith("FEESYNC_")]:
            monkeypatch.delenv(key)
        for key, value in secrets.items():
            monkeypatch.setenv(key, value)
        settings = load_settings(tmp_path / "feesync.toml")   # the inline config + environment validate
        assert set(settings.sources) == {"erpnext"} and settings.status_listen

        argv = img.resolve(img.exec_form("ENTRYPOINT") + services["feesync"]["command"], env)
        children["feesync"] = daemon = subprocess.Popen(argv, env=env, cwd=volume, stdout=subprocess.PIPE,
                                                        stderr=subprocess.PIPE)
        opts, health = img.healthcheck()
        deadline = time.monotonic() + 30
        pushed = 0
        while time.monotonic() < deadline:
            assert daemon.poll() is None, daemon.stderr.read().decode()[-2000:]
            try:
                with closing(sqlite3.connect(f"file:{volume / 'state.db'}?mode=ro", uri=True)) as db:
                    pushed = db.execute("select count(*) from documents where status = 'pushed'").fetchone()[0]
            except sqlite3.OperationalError:
                pass   # not created, or being migrated, yet
            if pushed >= 5:
                break
            time.sleep(0.2)
        assert pushed >= 5, "the daemon pushes the demo receipts into the LMS sandbox"
        check = subprocess.run(img.resolve(health, env), env=env, cwd=volume, capture_output=True, text=True,
                               timeout=float(opts["timeout"].rstrip("s")))
        assert check.returncode == 0 and "alive: daemon healthy (healthz)" in check.stdout, check.stdout

        daemon.send_signal(signal.Signals[img.last("STOPSIGNAL")])
        assert daemon.wait(timeout=float(services["feesync"]["stop_grace_period"].rstrip("s"))) == 0
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        codes = {name: child.wait(timeout=15) for name, child in children.items()}
        for child in children.values():
            child.stdout.close()
            child.stderr.close()
    assert codes == {"lms": 0, "erpnext": 0, "feesync": 0}, "exec: the sandboxes get SIGTERM and exit 0 too"
