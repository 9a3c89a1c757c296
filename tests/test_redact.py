"""redact: URLs as they may be recorded (no credentials, no query)."""

from __future__ import annotations

import pytest

from petscan.tuning.storage import storage_label
from petscan.utils.redact import redact_text, redact_url, redact_values


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://user:pw@host/x?token=t#f", "https://user:***@host/x?***"),
        ("postgresql://:pw@db:5432/optuna", "postgresql://:***@db:5432/optuna"),
        ("postgresql+psycopg2://u:p%40ss@db/o", "postgresql+psycopg2://u:***@db/o"),
        ("mysql://u:a/b?c@d@db:3306/o", "mysql://u:***@db:3306/o"),  # a pasted, unescaped password
        ("https://ghp_TOKEN@github.com/o/r", "https://***@github.com/o/r"),
        ("mysql://db/optuna?password=pw&x=1", "mysql://db/optuna?***"),
        ("https://host:8443/p?", "https://host:8443/p?***"),
        ("https://h/dl;jsessionid=S3CRET/w.h5", "https://h/dl;***/w.h5"),
        ("https://h/a;t=S3CRET;x=1/b/w.h5;v=2?q#f", "https://h/a;***/b/w.h5;***?***"),
        ("https://u:pw@h/d;sid=S3CRET#frag", "https://u:***@h/d;***?***"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////repo/tune/optuna.db", "sqlite:////repo/tune/optuna.db"),
        ("/repo/tune/optuna.journal", "/repo/tune/optuna.journal"),
        ("databricks", "databricks"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert storage_label(url) == expected


def test_redact_values_and_text():
    params = {
        "mlflow": {"tracking_uri": "https://u:pw@mlflow.example/", "experiment": "e"},
        "weights": {"sources": [{"type": "url", "url": "https://h/f?sig=S"}], "seed": 1},
    }
    assert redact_values(params) == {
        "mlflow": {"tracking_uri": "https://u:***@mlflow.example/", "experiment": "e"},
        "weights": {"sources": [{"type": "url", "url": "https://h/f?***"}], "seed": 1},
    }
    assert params["weights"]["sources"][0]["url"] == "https://h/f?sig=S"  # a copy
    text = "cannot open 'postgresql://u:S3CRET@db/o' (timeout); see https://docs/x?a=1."
    assert (
        redact_text(text)
        == "cannot open 'postgresql://u:***@db/o' (timeout); see https://docs/x?***"
    )


def test_credentials_over_plain_http_to_another_machine_are_refused(monkeypatch):
    from petscan.params.schema import section
    from petscan.tracking import store
    from petscan.utils.errors import UserError
    from petscan.utils.redact import refuse_cleartext_credentials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://me:S3CRET@mlflow.example:5000/")
    with pytest.raises(UserError) as err:
        store.use_store(section("mlflow", {}))
    assert str(err.value) == (
        "the MLflow tracking URI http://me:***@mlflow.example:5000/ would send its credentials "
        "unencrypted over http: use https://"
    )
    for fine in ("https://me:pw@mlflow.example/", "http://me:pw@127.0.0.1:5000", "http://h:5000"):
        refuse_cleartext_credentials(fine, "x")  # https, this machine, or no credentials


def test_a_login_in_params_yaml_is_refused_without_showing_it(tmp_path):
    """Credentials never go in params.yaml (committed, logged): the schema refuses a tracking
    URI with a user name or password, and the error line masks the password."""
    from petscan.params.schema import section
    from petscan.utils.errors import ParamsError

    for uri in ("http://me:S3CRET@127.0.0.1:5000/", "https://S3CRET@mlflow.example/"):
        with pytest.raises(ParamsError) as err:
            section("mlflow", {"tracking_uri": uri})
        assert "S3CRET" not in str(err.value)
        assert "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD" in str(err.value)
    assert section("mlflow", {"tracking_uri": "https://mlflow.example:443/"}).tracking_uri
