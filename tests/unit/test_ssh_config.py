"""The ssh_config labkit writes for a lab of this host from libvirt's leases, read as ssh,
fabric and testinfra read it (paramiko's parser)."""

from pathlib import Path

import paramiko

from labkit.apply.ssh import config


def test_each_node_is_reached_at_its_address_as_vagrant_with_the_installations_key(tmp_path):
    key = Path("/home/u/.local/share/labkit/id_ed25519")
    path = tmp_path / "ssh_config"
    path.write_text(config({"lb0": "192.168.124.184", "rs0": "192.168.124.62"}, key))
    parsed = paramiko.SSHConfig.from_path(str(path))
    assert parsed.get_hostnames() >= {"lb0", "rs0"}
    rs0 = parsed.lookup("rs0")
    assert (rs0["hostname"], rs0["user"], rs0["port"]) == ("192.168.124.62", "vagrant", "22")
    assert rs0["identityfile"] == [str(key)] and rs0["identitiesonly"] == "yes"
    # every VM makes its own host key, and the next lab reuses the addresses: none is kept
    assert (rs0["stricthostkeychecking"], rs0["userknownhostsfile"]) == ("no", "/dev/null")
    assert parsed.lookup("lb0")["hostname"] == "192.168.124.184"
