"""The configuration: the shipped file is valid, overrides apply, and every invalid value names its field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from node.config import Config, ConfigError, Destination, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    return path


def test_the_bundled_config_is_the_defaults_with_its_peers() -> None:
    config = load_config(None, {})
    defaults = Config()
    assert config.scp.ae_title == defaults.scp.ae_title and config.scp.port == 11112
    assert [peer.ae_title for peer in config.scp.peers] == ["ORTHANC", "STORESCU"]
    assert config.queue == defaults.queue and config.worker.batch_size == defaults.worker.batch_size
    assert config.data_dir == (Path.cwd() / "data").resolve()  # the bundled file's paths: from the working directory
    assert config.destinations == ()


def test_environment_overrides_reach_nested_fields_and_lists(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "scp:\n  port: 104\n"), {
        "KNEE_NODE_SCP_PORT": "11113",
        "KNEE_NODE_SCP_MAX_PDU": "65536",
        "KNEE_NODE_WORKER_BATCH_SIZE": "16",
        "KNEE_NODE_DESTINATIONS": "[{ae_title: PACS, host: 10.0.0.5, port: 104}]",
        "UNRELATED": "ignored",
    })
    assert (config.scp.port, config.scp.max_pdu, config.worker.batch_size) == (11113, 65536, 16)
    assert config.destinations == (Destination("PACS", "10.0.0.5", 104),)
    assert config.destinations[0].objects == ("sr", "sc", "seg")  # by default, every result object


def test_a_destination_can_take_some_of_the_result_objects(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "destinations:\n  - {ae_title: PACS, host: pacs, port: 104, objects: [sr]}\n"),
                         {})
    assert config.destinations[0].objects == ("sr",)


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("scp:\n  port: 70000\n", {}, "config: scp.port: 70000 is not a TCP port (1-65535)"),
    ("scp:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n", {}, "config: scp.ae_title: 'THIS_TITLE_IS_TOO_LONG' is not an AE"),
    ("scp:\n  prot: 104\n", {}, "config: scp.prot: unknown field"),
    ("worker:\n  batch_size: eight\n", {}, "config: worker.batch_size: expected an integer, got 'eight'"),
    ("worker:\n  device: tpu\n", {}, "config: worker.device: 'tpu' is not auto, cpu, cuda or cuda:N"),
    ("log_level: LOUD\n", {}, "config: log_level: 'LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
    ("destinations:\n  - {ae_title: PACS, host: pacs}\n", {}, "config: destinations[0].port: required"),
    ("destinations: PACS\n", {}, "config: destinations: expected a list, got 'PACS'"),
    ("destinations:\n  - {ae_title: P, host: p, port: 104, objects: [pdf]}\n", {},
     "config: destinations[0].objects[0]: 'pdf' is not one of sr, sc, seg"),
    ("destinations:\n  - {ae_title: P, host: p, port: 104, objects: []}\n", {},
     "config: destinations[0].objects: at least one of sr, sc, seg"),
    ("queue:\n  max_attempts: 0\n", {}, "config: queue.max_attempts: must be at least 1"),
    ("scp: [1, 2]\n", {}, "config: scp: expected a mapping"),
    ("scp:\n  port: [unclosed\n", {}, "config: "),
    ("", {"KNEE_NODE_SCP_PROT": "104"}, "config: KNEE_NODE_SCP_PROT: no such field"),
    ("", {"KNEE_NODE_DISPATCH_MAX_ATTEMPTS": "-1"}, "config: dispatch.max_attempts: must be at least 1"),
    ("tls:\n  certificate: node.crt\n  private_key: node.key\n  require_peer_certificate: false\n", {},
     "config: tls.certificate: "),
])
def test_an_invalid_value_names_its_field(tmp_path: Path, text: str, environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(write(tmp_path, text), environ)
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_serve_with_an_invalid_config_stops_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "node.cli", "serve", "--config",
                           str(write(tmp_path, "scp:\n  port: -1\n"))], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "config: scp.port: -1 is not a TCP port (1-65535)"
