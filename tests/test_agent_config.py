"""``agent.toml`` is type-checked when it is read: a value of the wrong type is a clear
startup error naming the key, not a device that misbehaves later."""

from __future__ import annotations

import pytest

from edgefleet.agent.config import load_config, type_problem

BASE = 'device_id = "pi-1"\nstate_dir = "state"\ntrust_root = "root.json"\n'


def _load(tmp_path, extra: str):
    path = tmp_path / "agent.toml"
    path.write_text(BASE + extra)
    return load_config(path)


@pytest.mark.parametrize(("line", "message"), [
    ('execution_providers = "CUDA"', 'execution_providers must be a list of strings'),
    ("execution_providers = [1]", "execution_providers must be a list of strings"),
    ('api_port = "8470"', "api_port must be a whole number"),
    ("api_port = 8470.5", "api_port must be a whole number"),
    ("api_port = true", "api_port must be a whole number"),
    ('summary_window_s = "60"', "summary_window_s must be a number"),
    ('broker_url = 1883', "broker_url must be a string"),
    ("tags = { site = 3 }", "tags must be a table of strings"),
    ('tags = "site=lab"', "tags must be a table of strings"),
    ('mqtt_password = 12', "mqtt_password must be a string"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path, line, message):
    with pytest.raises(ValueError, match=message) as refused:
        _load(tmp_path, line + "\n")
    assert str(tmp_path / "agent.toml") in str(refused.value)


def test_values_of_the_right_type_are_taken(tmp_path):
    config = _load(tmp_path, 'execution_providers = ["CUDAExecutionProvider"]\n'
                             "api_port = 0\nsummary_window_s = 30\n"
                             'tags = { site = "lab" }\n')
    assert config.execution_providers == ["CUDAExecutionProvider"]
    assert config.summary_window_s == 30 and config.tags == {"site": "lab"}
    assert config.state_dir == (tmp_path / "state").resolve()


def test_type_problem_rules():
    assert type_problem(True, bool) is None and type_problem(1, bool) == "true or false"
    assert type_problem(3, float) is None and type_problem(True, float) == "a number"
    assert type_problem(None, int | None) is None
    assert type_problem("x", int | None) == "a whole number"
    assert type_problem(["a"], list[str]) is None
