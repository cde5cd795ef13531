"""deploy/Dockerfile without Docker: its instructions are parsed, and its ENTRYPOINT/CMD, HEALTHCHECK and
STOPSIGNAL are run as the container would run them, against real sandboxes and a real config.

No image can be built or pulled here, so "the container" is emulated as closely as a process allows:
the Dockerfile's ENV (with `/opt/feesync/.venv/bin` mapped to this checkout's venv), a temp folder as
the `/var/lib/feesync` volume and working directory, the config at the path FEESYNC_CONFIG names (the
mount), secrets as `-e FEESYNC_...` variables, argv[0] resolved on that PATH, and the stop signal sent
to that process (which is PID 1 in the container: exec form, no shell in between).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from tests import scenario

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
IMAGE_VENV_BIN = "/opt/feesync/.venv/bin"
VENV_BIN = str(Path(sys.executable).parent)


# --- the Dockerfile, parsed ------------------------------------------------------------------------
def parse_dockerfile(text: str) -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """(global ARG defaults, stages as [(INSTRUCTION, arguments)]); continuations joined, comments dropped."""
    logical, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for line in logical:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            stages.append([])
        if not stages:
            if instr == "ARG":
                name, _, default = rest.partition("=")
                args[name] = default
            continue
        stages[-1].append((instr, rest))
    return args, stages


class Image:
    """The final stage of deploy/Dockerfile: what `docker run` would use."""

    def __init__(self) -> None:
        self.args, self.stages = parse_dockerfile(DOCKERFILE.read_text())
        self.final = self.stages[-1]

    def all(self, instr: str, stage: list[tuple[str, str]] | None = None) -> list[str]:
        return [rest for i, rest in (stage or self.final) if i == instr]

    def last(self, instr: str) -> str:
        found = self.all(instr)
        assert found, f"no {instr} in the final stage"
        return found[-1]

    def base(self) -> str:
        ref = self.final[0][1].split()[0]
        for name, value in self.args.items():
            ref = ref.replace("${" + name + "}", value)
        return ref

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for rest in self.all("ENV"):
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                out[key] = value
        return out

    def exec_form(self, instr: str) -> list[str]:
        value = self.last(instr)
        assert value.startswith("["), f"{instr} must be exec form (JSON), so signals reach feesync: {value}"
        return json.loads(value)

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        value = self.last("HEALTHCHECK")
        opts_text, sep, cmd = value.partition("CMD ")
        assert sep, value
        opts = dict(o.lstrip("-").split("=", 1) for o in opts_text.split())
        assert cmd.strip().startswith("["), "HEALTHCHECK CMD in exec form"
        return opts, json.loads(cmd)

    def run_env(self, config: Path, secrets: dict[str, str] | None = None) -> dict[str, str]:
        """The container's environment: image ENV (venv mapped), the config 'mount', `-e` secrets."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FEESYNC_", "NOTIFY_", "WATCHDOG_"))}
        for key, value in self.env().items():
            env[key] = value.replace(IMAGE_VENV_BIN, VENV_BIN).replace("$PATH", os.environ.get("PATH", ""))
        env["FEESYNC_CONFIG"] = str(config)
        env.update(scenario.secret_env() if secrets is None else secrets)
        return env

    def resolve(self, argv: list[str], env: dict[str, str]) -> list[str]:
        exe = shutil.which(argv[0], path=env["PATH"])
        assert exe and Path(exe).parent == Path(VENV_BIN), f"{argv[0]} resolves to {exe}, not the image's venv"
        return [exe, *argv[1:]]


def seconds(value: str) -> float:
    return float(value.rstrip("s"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- static checks ---------------------------------------------------------------------------------
def test_image_is_slim_python_non_root_with_state_volume_healthcheck_and_sigterm():
    """Final stage: python:3.11-slim, USER 10001 (not root), VOLUME /var/lib/feesync, STOPSIGNAL SIGTERM, exec forms."""
    img = Image()
    assert img.base().startswith("python:3.11-slim")
    user = img.last("USER")
    assert user.split(":")[0] not in ("root", "0") and int(user.split(":")[0]) >= 1000
    run = " ".join(img.all("RUN"))
    assert f"--uid {user.split(':')[0]}" in run, "the user the image runs as is created in it"
    assert json.loads(img.last("VOLUME")) == ["/var/lib/feesync"]
    assert img.last("WORKDIR") == "/var/lib/feesync"
    assert "install -d -o 10001 -g 10001 -m 0700 /var/lib/feesync" in run, "a fresh named volume is writable"
    assert img.last("STOPSIGNAL") == "SIGTERM"
    assert img.exec_form("ENTRYPOINT") == ["feesync"] and img.exec_form("CMD") == ["run"]
    opts, cmd = img.healthcheck()
    assert cmd == ["feesync", "check", "--liveness"]
    assert seconds(opts["timeout"]) <= seconds(opts["interval"]) and int(opts["retries"]) >= 2
    env = img.env()
    assert env["FEESYNC_CONFIG"] == "/etc/feesync/feesync.toml"
    assert env["PATH"].startswith(IMAGE_VENV_BIN + ":")
    venv = IMAGE_VENV_BIN.removesuffix("/bin")
    assert img.all("COPY")[-1] == f"--from=build {venv} {venv}", "the venv at the same path as it was built"


def test_build_stage_copies_every_package_and_data_file_the_install_needs(tmp_path):
    """A context made only of the build stage's COPY sources finds the same packages (and migrations) as the repo."""
    from setuptools import find_packages
    img = Image()
    build = img.stages[0]
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    for rest in img.all("COPY", build):
        *sources, dest = rest.split()
        for src in sources:
            target = ctx / (Path(dest) / Path(src).name if dest.endswith("/") else dest) if len(sources) > 1 \
                else ctx / dest
            if (ROOT / src).is_dir():
                shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / src, target)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = project["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(find_packages(str(ctx), include=include)) == sorted(find_packages(str(ROOT), include=include))
    assert (ctx / project["project"]["readme"]).is_file()
    for pattern in project["tool"]["setuptools"]["package-data"]["sync"]:
        assert sorted(p.name for p in (ctx / "sync").glob(pattern)) == \
            sorted(p.name for p in (ROOT / "sync").glob(pattern)), pattern
    ignore = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text().split()
    assert "**" in ignore and {"!pyproject.toml", "!README.md", "!sync/", "!connectors/"} <= set(ignore)


# --- running it --------------------------------------------------------------------------------------
def _write_config(tmp: Path, lms, erp, *, status_listen: str | None, max_stale: str) -> Path:
    volume = tmp / "volume"   # stands for /var/lib/feesync
    volume.mkdir(exist_ok=True)
    text = scenario.config_toml(str(volume / "state.db"), lms.base_url, erp.url, interval="1s")
    text = text.replace('lag = "0s"', f'lag = "0s"\nmax_stale = "{max_stale}"')
    if status_listen:
        text = f'status_listen = "{status_listen}"\n' + text
    cfg = tmp / "feesync.toml"   # stands for the /etc/feesync/feesync.toml mount
    cfg.write_text(text)
    return cfg


def _healthcheck(img: Image, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    opts, cmd = img.healthcheck()
    return subprocess.run(img.resolve(cmd, env), env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=seconds(opts["timeout"]))


def _until(img, env, cwd, want: int, timeout: float) -> subprocess.CompletedProcess:
    deadline = time.monotonic() + timeout
    while True:
        res = _healthcheck(img, env, cwd)
        if res.returncode == want or time.monotonic() > deadline:
            return res
        time.sleep(0.2)


def _start(img: Image, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    argv = img.resolve(img.exec_form("ENTRYPOINT") + img.exec_form("CMD"), env)
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(img: Image, child: subprocess.Popen) -> tuple[int, str, float]:
    sent = time.monotonic()
    child.send_signal(signal.Signals[img.last("STOPSIGNAL")])
    code = child.wait(timeout=20)
    err = child.stderr.read().decode()
    child.stdout.close()
    child.stderr.close()
    return code, err, time.monotonic() - sent


def test_container_command_is_healthy_turns_unhealthy_when_a_source_goes_stale_and_stops_with_exit_0(
        sandboxes, tmp_path):
    """CMD runs the daemon; HEALTHCHECK passes via /healthz, fails naming a stale source, recovers; STOPSIGNAL -> 0."""
    img = Image()
    lms, erp = sandboxes(scenario.build(n_students=3, receipts_per_student=2))
    cfg = _write_config(tmp_path, lms, erp, status_listen=f"127.0.0.1:{free_port()}", max_stale="3s")
    env = img.run_env(cfg)
    volume = tmp_path / "volume"
    child = _start(img, env, volume)
    try:
        ok = _until(img, env, volume, 0, timeout=20)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "alive: daemon healthy (healthz)" in ok.stdout
        assert (volume / "state.db").exists(), "the state lives in the volume"
        proxied = _healthcheck(img, {**env, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"},
                               volume)
        assert proxied.returncode == 0, "the probe of the loopback /healthz never goes through a proxy"

        deadline = time.monotonic() + 20
        while len(lms.payments()) < 6 and time.monotonic() < deadline:   # a first run succeeded
            time.sleep(0.05)
        assert len(lms.payments()) == 6
        erp.faults.fail(503, count=None)   # the ERP goes away: runs stop succeeding
        sick = _until(img, env, volume, 1, timeout=20)
        assert sick.returncode == 1, sick.stdout
        assert "answered 503: source erp: last successful run" in sick.stdout
        assert child.poll() is None, "an unhealthy daemon keeps running; the orchestrator decides"

        erp.faults.clear()
        again = _until(img, env, volume, 0, timeout=20)
        assert again.returncode == 0, again.stdout
    finally:
        code, err, took = _stop(img, child)
    assert code == 0, err[-2000:]
    assert took < 10
    assert '"event": "daemon.stopped"' in err
    gone = _healthcheck(img, env, volume)
    assert gone.returncode == 1 and "no daemon answering" in gone.stdout


def test_liveness_without_a_status_page_reads_the_last_successful_runs_from_the_state_store(sandboxes, tmp_path):
    """No status_listen: alive while every source succeeded within max_stale; 1 naming the source once stale."""
    img = Image()
    lms, erp = sandboxes(scenario.build(n_students=2, receipts_per_student=1))
    cfg = _write_config(tmp_path, lms, erp, status_listen=None, max_stale="2s")
    env = img.run_env(cfg)
    volume = tmp_path / "volume"
    missing = _healthcheck(img, env, volume)
    assert missing.returncode == 1 and "does not exist" in missing.stdout, "no state store yet: not alive"
    child = _start(img, env, volume)
    try:
        ok = _until(img, env, volume, 0, timeout=20)
        assert ok.returncode == 0 and "alive: daemon healthy (state)" in ok.stdout, ok.stdout + ok.stderr
    finally:
        code, err, _ = _stop(img, child)
    assert code == 0, err[-2000:]
    stale = _until(img, env, volume, 1, timeout=10)
    assert stale.returncode == 1
    text = stale.stdout
    assert "source erp: last successful run" in text and "older than its limit 2s" in text
    as_json = subprocess.run(img.resolve(["feesync", "check", "--liveness", "--json"], env), env=env, cwd=volume,
                             capture_output=True, text=True, timeout=30)
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and data["ok"] is False and data["via"] == "state"
    assert data["sources"]["erp"]["ok"] is False and data["sources"]["erp"]["max_stale_seconds"] == 2
