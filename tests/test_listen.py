"""Where `petscan app` and `petscan serve` listen: one loud stderr line off loopback."""

from __future__ import annotations

import contextlib

import pytest
import yaml
from conftest import REPO

from petscan.serving import listen

EXPOSED = ["0.0.0.0", "::", "", "10.1.2.3", "192.168.0.5", "2001:db8::1", "no-such-host.invalid"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_get_no_warning(host):
    assert listen.is_loopback(host)
    assert listen.exposure_warning(host, "app.host", "the web page") is None


@pytest.mark.parametrize("host", EXPOSED)
def test_any_other_host_gets_a_warning(host):
    assert not listen.is_loopback(host)
    warning = listen.exposure_warning(host, "app.host", "the web page")
    assert warning == (
        f"WARNING: app.host = {host!r} is not a loopback address: the web page will be "
        "reachable from other machines, without a password. Use 127.0.0.1 unless you mean it."
    )


def write_params(root, section: str, host: str):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section]["host"] = host
    params["mlflow"]["registered_model"] = "no-such-model"
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


class Exec(BaseException):  # not an Exception: the command's bug handler lets it through
    """Raised instead of replacing the test process with MLflow's server."""


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False)])
def test_serve_warns_in_one_line_before_it_starts_the_server(
    host, warned, tmp_path, monkeypatch, capsys
):
    from petscan.serving import serve

    def no_exec(*args):
        raise Exec

    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(serve.os, "execve", no_exec)
    monkeypatch.setattr(serve, "open_store", lambda params: "sqlite:///x.db")
    monkeypatch.setattr(serve, "find_model", lambda uri, params: "models:/m/1")
    with pytest.raises(Exec):
        serve.main(["--params", str(write_params(tmp_path, "serve", host))])
    lines = capsys.readouterr().err.splitlines()
    warnings = [line for line in lines if "WARNING" in line]
    expected = (
        f"petscan serve: WARNING: serve.host = {host!r} is not a loopback address: the scoring "
        "server (which reads any image path it is sent on this machine) will be reachable"
    )
    assert [w.startswith(expected) for w in warnings] == ([True] if warned else [])


def test_app_warns_for_a_host_given_on_the_command_line(tmp_path, monkeypatch, capsys):
    from petscan.serving.app import server as app

    monkeypatch.setenv("PETSCAN_ROOT", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    params = write_params(tmp_path, "app", "127.0.0.1")
    # no model is registered: the command stops after the warning (its exit is not tested here)
    with contextlib.suppress(Exception):
        app.main(["--params", str(params), "--host", "0.0.0.0"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert warnings == [
        "petscan app: WARNING: --host = '0.0.0.0' is not a loopback address: the web page (and "
        "the model) will be reachable from other machines, without a password. Use 127.0.0.1 "
        "unless you mean it."
    ]
