"""`feesync check` and configuration: every problem listed at once, secrets from env or files, scopes verified."""

from __future__ import annotations

import json

import pytest

from sync.config import load_settings
from sync.errors import ConfigError
from tests import proc, scenario


def test_every_config_problem_is_listed_at_once(tmp_path):
    """Bad duration, unknown payment method, bad time zone and a missing key are all reported together."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("""
[lms]
base_url = "ftp://nowhere"
time_zone = "Mars/Olympus"
[sources.erp]
connector = "erpnext"
lookback = "ten minutes"
[sources.erp.mapping.payment_methods]
"Cash" = "gold_bars"
""")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = "\n".join(err.value.problems)
    for needle in ("base_url", "time zone", "lookback", "gold_bars"):
        assert needle in text, f"{needle!r} missing from: {text}"
    out = proc.run("--config", str(cfg), "check", "--json", secrets=False)
    assert out.returncode == 1
    problems = json.loads(out.stdout)["problems"]
    assert len(problems) >= 4


def test_secrets_come_from_files(tmp_path, monkeypatch):
    """`api_key_file` is read (trimmed) into a SecretStr; the value never shows in the settings' repr."""
    key_file = tmp_path / "lms_key"
    key_file.write_text("zl_from_a_file_123\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[lms]\napi_key_file = "{key_file}"\n')
    for k in list(__import__("os").environ):
        if k.startswith("FEESYNC_"):
            monkeypatch.delenv(k)
    settings = load_settings(cfg)
    assert settings.lms.api_key.get_secret_value() == "zl_from_a_file_123"
    assert "zl_from_a_file_123" not in repr(settings)


def test_unreadable_secret_file_is_named_with_the_other_problems(tmp_path):
    """A secret file that does not exist is named, together with the other configuration problems."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[lms]
api_key_file = "{tmp_path / 'missing'}"
[sources.x]
connector = "erpnext"
lookback = "soon"
""")
    out = proc.run("--config", str(cfg), "check", "--json", secrets=False)
    assert out.returncode == 1
    problems = " | ".join(json.loads(out.stdout)["problems"])
    assert "cannot read secret file" in problems and "'soon'" in problems


def test_a_connector_that_is_not_installed_is_named(tmp_path):
    """`connector = "no_such_erp"` stops start-up with the connector's name and the installed ones."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "state.db"}"\n[lms]\n[sources.x]\nconnector = "no_such_erp"\n')
    out = proc.run("--config", str(cfg), "check", "--json", secrets=False,
                   extra_env={"FEESYNC_LMS__API_KEY": "zl_whatever_1234"})
    assert out.returncode == 1
    problems = " | ".join(json.loads(out.stdout)["problems"])
    assert "'no_such_erp' is not installed" in problems and "erpnext" in problems


def test_check_passes_and_then_names_a_missing_write_scope(sandboxes, tmp_path):
    """With a full key `check` exits 0; with a read-only key it exits 1 naming fees:write."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    scn["lms_seed"]["institutes"][0]["api_keys"].append(
        {"key": "zl_read_only_key_42", "name": "ro", "scopes": ["fees:read", "students:read"]})
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)
    ok = proc.run("--config", str(cfg), "check", "--json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout) == {"ok": True, "problems": []}
    ro = proc.run("--config", str(cfg), "check", "--json", extra_env={"FEESYNC_LMS__API_KEY": "zl_read_only_key_42"})
    assert ro.returncode == 1
    problems = json.loads(ro.stdout)["problems"]
    assert any("fees:write" in p for p in problems), problems
    assert lms.stats()["writes_applied"] == 0, "check writes nothing"


def test_check_names_an_unreachable_erp(sandboxes, tmp_path):
    """An ERP URL nobody answers on is listed as a problem of that source."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    cfg = tmp_path / "c.toml"
    cfg.write_text(scenario.config_toml(str(tmp_path / "s.db"), lms.base_url, "http://127.0.0.1:9"))
    out = proc.run("--config", str(cfg), "check", "--json")
    assert out.returncode == 1
    problems = [p for p in json.loads(out.stdout)["problems"] if p.startswith("sources.erp:")]
    assert len(problems) == 1, problems
    # the failed request is named once, and nothing talks of a "next cycle" check does not have
    assert problems[0].count("ERP GET /api/method/frappe.auth.get_logged_user") == 1, problems[0]
    assert "next cycle" not in problems[0]


def test_a_source_only_the_environment_names_says_which_variables_made_it(tmp_path):
    """A stray FEESYNC_SOURCES__OTHER__... (e.g. left exported for another config) is named, value never shown."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n')
    out = proc.run("--config", str(cfg), "conflicts", "list", secrets=False,
                   extra_env={"FEESYNC_SOURCES__OTHER__SETTINGS__API_SECRET": "s3cr3t-value-xyz"})
    assert out.returncode == 2
    assert "sources.other.connector: Field required (the environment sets " \
           "FEESYNC_SOURCES__OTHER__SETTINGS__API_SECRET, but the config file defines no sources.other" in \
           " ".join(out.stderr.split())
    assert "s3cr3t-value-xyz" not in out.stderr + out.stdout


@pytest.mark.parametrize("var,value,what", [
    ("FEESYNC_LMS__API_KEY", "zl_LEAKME_A\nB", "lms.api_key: contains a line break or other control character at "
                                               "position 12"),
    ("FEESYNC_LMS__API_KEY", "zl_LEAKMEé", "lms.api_key: contains a non-ASCII character at position 10"),
    ("FEESYNC_SOURCES__ERP__SETTINGS__API_SECRET", "LEAKME\u00c9x", "sources.erp.settings.api_secret: contains a "
                                                                    "non-ASCII character at position 7"),
])
def test_a_secret_no_server_could_accept_is_refused_by_position_never_printed(sandboxes, tmp_path, var, value, what):
    """A control or non-ASCII character in a header-bound secret: a clear refusal naming where, not a
    traceback, and the value appears nowhere (it used to surface inside httpx's header error)."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    cfg = proc.write_config(tmp_path, lms, erp)
    for cmd in (["check"], ["once"], ["once", "--dry-run", "--json"]):
        out = proc.run("--config", str(cfg), *cmd, extra_env={var: value})
        text = " ".join((out.stdout + out.stderr).split())
        assert out.returncode in (1, 2) and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert what in text, text
        assert "LEAKME" not in out.stdout + out.stderr
    store = tmp_path / "state.db"
    assert not store.exists() or b"LEAKME" not in store.read_bytes()


def test_two_sources_reading_the_same_folder_for_one_institute_are_refused(tmp_path):
    """With different key prefixes they would push every receipt twice; `check` refuses the config."""
    drop = tmp_path / "drop"
    drop.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9/api/v1/public"\n'
                   f'[sources.csv_a]\nconnector = "files"\nkey_prefix = "a-"\n[sources.csv_a.settings]\n'
                   f'folder = "{drop}"\n[sources.csv_b]\nconnector = "files"\nkey_prefix = "b-"\n'
                   f'[sources.csv_b.settings]\nfolder = "{drop}/"\n')
    out = proc.run("--config", str(cfg), "check", secrets=False, extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 1, text
    assert "sources.csv_b: reads the same files data as sources.csv_a (same folder)" in text, text
    once = proc.run("--config", str(cfg), "once", secrets=False, extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
    assert once.returncode == 2 and "reads the same files data" in " ".join(once.stderr.split())


def test_check_offline_passes_with_an_erp_down_and_refuses_a_store_it_cannot_write(sandboxes, tmp_path):
    """What the service runs before it starts: no network (an ERP that is down stops only its source once
    the daemon runs), but a state store the service user cannot write is refused there, and by `once`."""
    scn = scenario.build(n_students=1, receipts_per_student=1)
    lms, erp = sandboxes(scn)
    cfg = tmp_path / "c.toml"
    cfg.write_text(scenario.config_toml(str(tmp_path / "s.db"), lms.base_url, "http://127.0.0.1:9"))
    assert proc.run("--config", str(cfg), "check").returncode == 1
    offline = proc.run("--config", str(cfg), "check", "--offline", "--json")
    assert offline.returncode == 0 and json.loads(offline.stdout) == {"ok": True, "problems": []}, offline.stdout

    # a store this process cannot write (read-only the way a mount or a root-owned restore is; root
    # writes any file, so SQLite's read-only mode stands in for the permission here)
    ro_cfg = tmp_path / "ro.toml"
    ro_cfg.write_text(cfg.read_text().replace(
        f'state_path = "{tmp_path / "s.db"}"', f'state_url = "sqlite:///file:{tmp_path / "s.db"}?mode=ro&uri=true"'))
    ro = proc.run("--config", str(ro_cfg), "check", "--offline", "--json")
    assert ro.returncode == 1 and "cannot be written" in " ".join(json.loads(ro.stdout)["problems"]), ro.stdout
    once = proc.run("--config", str(ro_cfg), "once")
    assert once.returncode == 2 and "Traceback" not in once.stderr, once.stderr[-2000:]
    assert "attempt to write a readonly database" in " ".join(once.stderr.split())


def test_check_lists_every_unreadable_key_file_lms_and_erp_alike_in_a_stable_order(tmp_path):
    """Each missing key file is named (it named one of them, at random); read-only commands still work."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9"\n'
                   f'api_key_file = "{tmp_path / "lms-key"}"\n[sources.erp]\nconnector = "erpnext"\ninterval = "1m"\n'
                   f'[sources.erp.settings]\nurl = "http://127.0.0.1:9"\napi_key_file = "{tmp_path / "erp-key"}"\n'
                   f'api_secret_file = "{tmp_path / "erp-secret"}"\n')
    runs = [json.loads(proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False).stdout)["problems"]
            for _ in range(3)]
    assert runs[0] == runs[1] == runs[2]
    assert [p.split(":")[0] for p in runs[0]] == [
        "lms.api_key_file", "sources.erp.settings.api_key_file", "sources.erp.settings.api_secret_file"], runs[0]
    assert all("cannot read secret file" in p for p in runs[0])
    assert proc.run("--config", str(cfg), "state", "upgrade", secrets=False).returncode == 0
    status = proc.run("--config", str(cfg), "status", "--json", secrets=False)
    assert status.returncode == 0, status.stderr          # reading the state store needs no LMS key
    once = proc.run("--config", str(cfg), "once", secrets=False)
    assert once.returncode == 2 and "lms.api_key_file: cannot read secret file" in once.stderr


def test_an_empty_key_variable_is_refused_not_sent_in_place_of_the_files_key(tmp_path):
    """`FEESYNC_LMS__API_KEY=` (set, empty) used to replace the file's key silently and pass check --offline."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9"\n'
                   f'api_key = "{scenario.LMS_KEY}"\n')
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False,
                   extra_env={"FEESYNC_LMS__API_KEY": ""})
    assert out.returncode == 1
    assert ("lms.api_key: is empty (FEESYNC_LMS__API_KEY is set but empty); set it, or remove it to use "
            "api_key_file") in json.loads(out.stdout)["problems"]


@pytest.mark.parametrize("url_a, url_b", [("http://127.0.0.1:18712", "http://localhost:18712/"),
                                          ("https://erp.example.org", "https://ERP.example.org:443"),
                                          ("http://erp.example.org/", "http://erp.example.org:80")])
def test_one_erp_spelled_two_ways_is_still_one_erp(tmp_path, url_a, url_b):
    """Two sources on one ERPNext with different key prefixes wrote every receipt twice when the URLs
    differed only in spelling (localhost/127.0.0.1, a default port, case)."""
    cfg = tmp_path / "c.toml"
    src = ('[sources.{n}]\nconnector = "erpnext"\ninterval = "1m"\nkey_prefix = "{n}-"\n[sources.{n}.settings]\n'
           'url = "{u}"\napi_key = "k"\napi_secret = "s"\n')
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9"\n'
                   + src.format(n="a", u=url_a) + src.format(n="b", u=url_b))
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False,
                   extra_env={"FEESYNC_LMS__API_KEY": scenario.LMS_KEY})
    assert out.returncode == 1
    assert json.loads(out.stdout)["problems"] == [
        "sources.b: reads the same erpnext data as sources.a (same url) for the same institute; each receipt "
        "would be written once per source. Keep one of them"]


def test_two_institutes_on_one_lms_key_are_refused(tmp_path):
    cfg = tmp_path / "c.toml"
    inst = '[institutes.{i}.lms]\nbase_url = "http://127.0.0.1:9{s}"\napi_key = "' + scenario.LMS_KEY + '"\n'
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n' + inst.format(i="north", s="") + inst.format(i="south", s="/"))
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False)
    assert out.returncode == 1
    assert json.loads(out.stdout)["problems"] == [
        "institutes.south.lms: the same LMS and API key as institutes.north; one key is one LMS institute, so "
        "its sources belong in one section"]


def test_check_lists_the_settings_and_every_sources_problems_in_one_answer(tmp_path):
    """A bad time zone, an unreadable LMS key file, a bad interval, missing ERP key files, a missing secret
    and an unknown connector: one `check` names them all (they used to come out in three rounds)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9"\n'
                   f'api_key_file = "{tmp_path / "no-lms-key"}"\ntime_zone = "Mars/Olympus"\n'
                   '[sources.zzz]\nconnector = "erpnext"\ninterval = "banana"\n[sources.zzz.settings]\n'
                   f'url = "http://127.0.0.1:9"\napi_key_file = "{tmp_path / "no-key"}"\n'
                   '[sources.yyy]\nconnector = "erpnext"\ninterval = "1m"\n[sources.yyy.settings]\n'
                   f'url = "http://127.0.0.2:9"\napi_key_file = "{tmp_path / "no-key-2"}"\n'
                   '[sources.aaa]\nconnector = "nosuchconnector"\n')
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False)
    assert out.returncode == 1
    where = [p.split(":")[0] for p in json.loads(out.stdout)["problems"]]
    assert sorted(where) == sorted([
        "lms.api_key_file", "lms.time_zone", "sources.zzz.interval",
        "sources.zzz.settings.api_key_file", "sources.zzz.settings.api_secret",
        "sources.yyy.settings.api_key_file", "sources.yyy.settings.api_secret",
        "sources.aaa.connector"]), where


def test_two_erpnext_sites_behind_one_server_told_apart_by_host_header_are_two_erps(tmp_path, monkeypatch):
    """Frappe serves several sites from one address, routed by Host; those are different ERPs. A key file
    under ~ is read from the home folder, and a blank key variable beside a key file leaves the file's key."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lms_key").write_text(scenario.LMS_KEY + "\n")
    cfg = tmp_path / "c.toml"
    src = ('[sources.{n}]\nconnector = "erpnext"\ninterval = "1m"\nkey_prefix = "{n}-"\n[sources.{n}.settings]\n'
           'url = "http://127.0.0.1:8000"\nhost_header = "{n}.localhost"\napi_key = "k"\napi_secret = "s"\n')
    cfg.write_text(f'state_path = "{tmp_path / "s.db"}"\n[lms]\nbase_url = "http://127.0.0.1:9"\n'
                   'api_key_file = "~/lms_key"\n' + src.format(n="site1") + src.format(n="site2"))
    out = proc.run("--config", str(cfg), "check", "--offline", "--json", secrets=False,
                   extra_env={"HOME": str(tmp_path), "FEESYNC_LMS__API_KEY": "  "})
    assert json.loads(out.stdout) == {"ok": True, "problems": []}, out.stdout
