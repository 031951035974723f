"""The CLI's answers that need no VM: rendering, and one clear error for bad input."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from labkit.cli import app
from labkit.labfile import LABS

runner = CliRunner()


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_render_prints_a_vagrantfile():
    result = runner.invoke(app, ["render", "tun", "--accel", "tcg"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# Rendered by labkit from labs/tun/lab.yaml")
    assert 'libvirt.driver = "qemu"' in result.stdout
    assert 'libvirt__network_name: "labkit-tun-int"' in result.stdout


def test_render_for_virtualbox_with_another_box():
    result = runner.invoke(app, ["render", "dr", "--provider", "virtualbox", "--box", "debian/bookworm64"])
    assert result.exit_code == 0, result.output
    assert 'config.vm.box = "debian/bookworm64"' in result.stdout
    assert "insert_key" not in result.stdout  # another box keeps Vagrant's own key handling
    assert 'virtualbox__intnet: "labkit-dr-ext"' in result.stdout


def bad_lab(tmp_path, text):
    path = tmp_path / "bad" / "lab.yaml"
    path.parent.mkdir()
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["up", "render"])
def test_bad_lab_file_one_error_nothing_created(tmp_path, home, command):
    nat = (LABS / "nat" / "lab.yaml").read_text()
    path = bad_lab(tmp_path, nat.replace("scheduler: rr", "scheduler: fastest", 1))
    result = runner.invoke(app, [command, path])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"error: {path}: services[0].scheduler: unknown scheduler 'fastest'. "
        "ipvsadm offers: rr wrr lc wlc lblc lblcr dh sh sed nq mh fo ovf"
    ]
    assert not (home / "labs").exists()


def test_unknown_lab_lists_the_known_ones():
    result = runner.invoke(app, ["up", "natt"])
    assert result.exit_code == 1
    assert (
        "no lab 'natt'" in result.stderr
        and "Known labs: containers, dr, fwmark, mesh, nat, schedulers, tun" in result.stderr
    )


def test_commands_on_a_lab_that_is_not_up():
    for args in (["verify"], ["status"], ["down"], ["provision"], ["ssh", "lb0"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, args
        assert result.stderr.strip() == "error: no lab is up. Start one with: labkit up nat"
    result = runner.invoke(app, ["verify", "tun"])
    assert result.exit_code == 1 and "the lab tun is not up. Start it with: labkit up tun" in result.stderr


def test_unknown_option_value_is_refused():
    result = runner.invoke(app, ["render", "nat", "--provider", "hyperv"])
    assert result.exit_code == 2 and "hyperv" in result.output


def test_virtualbox_needs_a_virtualbox_box(home):
    result = runner.invoke(app, ["up", "nat", "--provider", "virtualbox"])
    assert result.exit_code == 1
    assert "built for libvirt only" in result.stderr and "--box" in result.stderr
    assert not (home / "labs").exists()


def test_explain_prints_each_nodes_commands_with_reasons():
    result = runner.invoke(app, ["explain", "nat", "--node", "rs0"])
    assert result.exit_code == 0, result.output
    assert "## rs0 (real_server)" in result.stdout
    assert "# 7. NAT: replies to 192.168.55.0/24 go back through the director 192.168.66.10" in result.stdout
    assert "ip route replace 192.168.55.0/24 via 192.168.66.10" in result.stdout


def test_explain_unknown_node():
    result = runner.invoke(app, ["explain", "nat", "--node", "rs7"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: the lab nat has no node 'rs7'. Its nodes: lb0, lb1, rs0, rs1, cl0"


def test_graph_writes_svg_and_png(tmp_path):
    result = runner.invoke(app, ["graph", "dr", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dr.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "dr.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "args", [["show"], ["weight", "nat", "rs0", "2"], ["fail", "nat", "lb0"], ["heal"], ["trace"], ["bench"]]
)
def test_commands_on_a_running_lab_say_when_none_is_up(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "labkit up" in result.stderr, result.stderr


def test_bench_bounds():
    result = runner.invoke(app, ["bench", "nat", "--requests", "1000000"])
    assert result.exit_code == 2 and "20000" in result.output  # click: a usage error


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["up", "nat", "--kernel", "buster"],
            "error: unknown kernel 'buster': give a Debian suite (bookworm, "
            "bookworm-backports, trixie, sid) or the path of a linux-image-*.deb",
        ),
        (
            ["up", "nat", "--kernel", "sid", "--box", "debian/bookworm64"],
            "error: --kernel sid and --box debian/bookworm64 both choose the box: give one of them",
        ),
        (
            ["up", "nat", "--kernel", "trixie"],
            "error: there is no box for kernel trixie. Build it with: labkit box build --kernel trixie",
        ),
        (
            ["box", "build", "--kernel", "6.12"],
            "error: unknown kernel '6.12': give a Debian suite (bookworm, "
            "bookworm-backports, trixie, sid) or the path of a linux-image-*.deb",
        ),
    ],
)
def test_a_kernel_that_cannot_be_booted_is_one_error(home, tmp_path, monkeypatch, args, says):
    monkeypatch.setenv("VAGRANT_HOME", str(tmp_path / "vagrant"))  # no boxes at all
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == says
    assert not (home / "labs").exists()


def test_a_lab_partly_up_from_another_kernel_is_not_mixed(home):
    folder = home / "labs" / "nat"
    folder.mkdir(parents=True)
    (folder / "Vagrantfile").write_text(
        'Vagrant.configure("2") do |config|\n  config.vm.box = "labkit/linux-7.2.13-deb14-amd64"\n'
    )
    result = runner.invoke(app, ["up", "nat", "--accel", "tcg"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "error: nat is (partly) up from box labkit/linux-7.2.13-deb14-amd64, not "
        "labkit/bookworm: continue it with the same --kernel or --box, or remove it "
        "first: labkit down nat"
    )
    assert sorted(p.name for p in folder.iterdir()) == ["Vagrantfile"]


def test_trace_takes_a_udp_service_bench_does_not():
    from labkit.errors import LabkitError
    from labkit.labfile import load_lab

    nat = load_lab(LABS / "nat" / "lab.yaml")
    assert nat.service("udp 192.168.55.100:9000", udp=True).key == "udp 192.168.55.100:9000"
    assert nat.service(None, udp=True).key == "tcp 192.168.55.100:80"
    with pytest.raises(LabkitError, match=r"the lab nat has no TCP service 'udp 192.168.55.100:9000'"):
        nat.service("udp 192.168.55.100:9000")


def test_a_copy_is_rendered_under_its_own_name():
    result = runner.invoke(app, ["render", "nat", "--accel", "tcg", "--as", "alice"])
    assert result.exit_code == 0, result.output
    assert 'libvirt.default_prefix = "labkit-alice-"' in result.stdout
    assert 'libvirt__network_name: "labkit-alice-ext"' in result.stdout
    assert 'management_network_name = "labkit-alice-mgmt"' in result.stdout


@pytest.mark.parametrize(
    "args, says",
    [
        (
            ["render", "nat", "--as", "Alice!"],
            "error: --as Alice!: a copy's name becomes part of its VMs' and networks' "
            "names. Use lower-case letters, digits and '-'",
        ),
        (["render", "nat", "--connect", "big"], "error: --connect big: no such host in labkit's config file."),
        (
            ["doctor", "--connect", "qemu:///session"],
            "error: --connect qemu:///session: qemu:///session is not the URI",
        ),
    ],
)
def test_bad_copy_names_and_hosts_are_one_error(args, says):
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith(says), result.stderr


def test_hosts_come_from_the_config_file(home):
    home.mkdir(parents=True)
    (home / "config.yaml").write_text("hosts:\n  big: qemu+ssh://teacher@big/system\n")
    result = runner.invoke(app, ["render", "nat", "--accel", "tcg", "--connect", "big"])
    assert result.exit_code == 0, result.output
    assert 'libvirt.uri = "qemu+ssh://teacher@big/system"' in result.stdout
    (home / "config.yaml").write_text("hosts: [big]\n")
    result = runner.invoke(app, ["render", "nat", "--connect", "big"])
    assert result.exit_code == 1
    assert "config.yaml: expected `hosts:` with one `name: qemu+ssh://user@host/system` per host" in result.stderr


def test_copies_that_are_not_up_are_named(home):
    folder = home / "labs" / "alice"
    folder.mkdir(parents=True)
    (folder / "Vagrantfile").write_text("")
    (folder / "lab.yaml").write_text((LABS / "nat" / "lab.yaml").read_text())
    result = runner.invoke(app, ["status", "nat"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: the lab nat is not up, but copies of it are: alice. Name one, e.g. labkit status alice"
    )
    result = runner.invoke(app, ["status", "bob"])
    assert result.stderr.strip() == (
        "error: no lab or copy 'bob' is up (up: alice). Start one with: labkit up LAB --as bob"
    )


def schema_problems(schema: dict, data, root: dict, at: str = "") -> list[str]:
    """What in `data` the schema refuses: a small reading of JSON Schema (objects, arrays, enums,
    references, anyOf), enough for the lab file's structure."""
    if "$ref" in schema:
        return schema_problems(root["$defs"][schema["$ref"].rsplit("/", 1)[1]], data, root, at)
    if "anyOf" in schema:
        tried = [schema_problems(s, data, root, at) for s in schema["anyOf"]]
        return [] if [] in tried else tried[0]
    if "enum" in schema and data not in schema["enum"]:
        return [f"{at}: {data!r} is none of {schema['enum']}"]
    if schema.get("type") == "array":
        return [p for i, item in enumerate(data) for p in schema_problems(schema["items"], item, root, f"{at}[{i}]")]
    if schema.get("type") != "object":
        return []
    problems = [f"{at}: {key} is missing" for key in schema.get("required", []) if key not in data]
    for key, value in data.items():
        sub = schema.get("properties", {}).get(key, schema.get("additionalProperties", True))
        if sub is False:
            problems.append(f"{at}: {key} is not a field")
        elif isinstance(sub, dict):
            problems += schema_problems(sub, value, root, f"{at}.{key}")
    return problems


@pytest.mark.parametrize("lab", ["nat", "tun", "dr", "fwmark", "schedulers"])
def test_schema_prints_the_lab_files_json_schema(lab):
    import yaml

    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    schema = json.loads(result.stdout)
    assert schema["title"] == "Lab" and set(schema["required"]) == {"name", "networks", "nodes"}
    data = yaml.safe_load((LABS / lab / "lab.yaml").read_text())
    assert schema_problems(schema, data, schema) == []
    data["services"][0]["weight"] = 3  # a real server's field, not a service's
    data["nodes"]["lb0"]["role"] = "router"
    assert schema_problems(schema, data, schema) == [
        ".nodes.lb0.role: 'router' is none of ['director', 'real_server', 'client', 'swarm_node']",
        ".services[0]: weight is not a field",
    ]


def test_an_interrupted_up_names_the_command_that_continues_it():
    from labkit.boot.target import up_command

    assert up_command("nat", "labkit/bookworm", None, None, None) == "labkit up nat"
    assert up_command("labs/my lab", "labkit/bookworm", "trixie", "alice", "big") == (
        "labkit up 'labs/my lab' --kernel trixie --as alice --connect big"
    )
    assert up_command("nat", "debian/bookworm64", None, None, None) == "labkit up nat --box debian/bookworm64"


def test_a_command_starts_without_the_libraries_only_some_commands_use():
    """Every `labkit` command imports the whole CLI; pytest (matrix's --checks), jinja2 (render)
    and python-debian (a box build) are loaded only by the commands that use them: each costs a
    tenth of a second or so at every start, more under emulation's load."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, labkit.cli; print(*sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "labkit.cli" in loaded
    assert not {"pytest", "jinja2", "debian"} & set(loaded)
