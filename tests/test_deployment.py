"""The deployment files agree with the code: compose validates, its environment is a valid node config, and
Orthanc's modality entry and routing script name the node's AE title."""

from __future__ import annotations

import json
import re
import subprocess

import yaml

from node.config import load_config
from tests.helpers import require_tool
from tools import REPO


def test_docker_compose_config_validates() -> None:
    done = subprocess.run([require_tool("docker-compose"), "config", "-q"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_environment_is_a_valid_node_config() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    for name in ("knee-node", "knee-node-gpu"):
        environment = compose["services"][name]["environment"]
        config = load_config(None, environment)
        assert [str(d) for d in config.destinations] == ["ORTHANC@orthanc:4242"]
        assert [p.ae_title for p in config.scp.peers] == ["ORTHANC"]


def test_orthanc_config_and_routing_script_name_the_node() -> None:
    node = load_config(None, {})
    orthanc = json.loads((REPO / "config" / "orthanc" / "orthanc.json").read_text())
    modality = orthanc["DicomModalities"]["knee-node"]
    assert (modality["AET"], modality["Port"], modality["AllowStore"]) == (node.scp.ae_title, node.scp.port, True)
    script = (REPO / "config" / "orthanc" / "route-to-knee-node.lua").read_text()
    assert re.search(rf"NODE_AET = '{node.scp.ae_title}'", script)
    assert "local NODE = 'knee-node'" in script


def test_compose_ohif_is_the_tested_viewer_on_orthancs_dicomweb() -> None:
    """The compose OHIF is the version `make setup` installs for tests/test_ohif.py, with the configuration that test
    uses (config/ohif/app-config.js), and its nginx passes /dicom-web/ to Orthanc's HTTP port."""
    ohif = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["ohif"]
    pinned = re.search(r"^OHIF_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert pinned and ohif["image"] == f"ohif/app:v{pinned[1]}"
    mounts = dict(volume.removesuffix(":ro").split(":") for volume in ohif["volumes"])
    assert all((REPO / source).is_file() for source in mounts)
    assert mounts["./config/ohif/app-config.js"] in (REPO / "config" / "ohif" / "nginx.conf").read_text()
    orthanc = json.loads((REPO / "config" / "orthanc" / "orthanc.json").read_text())
    nginx = (REPO / "config" / "ohif" / "nginx.conf").read_text()
    assert f"proxy_pass http://orthanc:{orthanc['HttpPort']}{orthanc['DicomWeb']['Root']};" in nginx
    listen = re.search(r"listen (\d+);", nginx)
    assert listen and ohif["ports"] == [f"127.0.0.1:3000:{listen[1]}"]
