"""Registries (issue 25 item 2): every algorithm, critic placement and environment name is checked against its
registry in one line at every entry point, and a plugin adds an algorithm from a file of its own.

tests/plugins/nocomm.py registers "nocomm" (each agent trains alone). Trained through the real CLI on 2 processes,
it equals DecPG with k=0 bit for bit: with no in-neighbour, DecPG's mix is θᵢ·1.0 (the kNN matrix is the identity),
so its step θᵢ·1.0 − η gᵢ is LocalSGD's θᵢ − η gᵢ exactly; any communication of parameters or gradients would
break the equality (DecPG with k=1 is shown to differ).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "tests" / "plugins" / "nocomm.py"
BASE = ROOT / "configs" / "simple_spread.yaml"
TINY = ["--iterations", "2", "--set", "env.n_envs=2", "--set", "env.episode_length=5", "--set", "train.hidden=16",
        "--set", "eval.interval=0", "--set", "eval.episodes=2", "--set", "eval.test_episodes=2",
        "--set", "run.tensorboard=false", "--no-preflight"]
KNOWN = {"algorithm": "unknown algorithm 'nope' (known: decpg, ps, ps_entropy, push_sum)",
         "critic": "unknown critic placement 'nope' (known: central, local)",
         "env": "unknown environment 'nope' (known: simple_spread, smax:<map>, smac:<map>, pettingzoo:<module>:<factory>)"}
KEYS = {"algorithm": ("algo", "name"), "critic": ("algo", "critic"), "env": ("env", "name")}
FLAGS = {"algorithm": "--algo", "critic": "--critic"}  # decnode-run has no env flag: env.name is --set or a file


def cli(args, cwd, module="decnode.run", timeout=300):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def one_line(res, needle, prog="decnode-run") -> str:
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, (res.returncode, res.stderr[-2000:])
    assert lines[0].startswith(f"{prog}: error: ") and needle in lines[0], lines[0]
    return lines[0]


def sweep_file(box, grid: dict, **set_keys) -> Path:
    path = box / "sweep.yaml"
    body = {"config": str(BASE), "out": str(box / "sweeps" / "s"), "processes": 2,
            "set": {"env.n_envs": 2, "env.episode_length": 5, "train.iterations": 1, "algo.k": 1, **set_keys},
            "grid": grid}
    path.write_text(json.dumps(body))  # JSON is YAML
    return path


# ---- one unknown name per registry at each entry point ------------------------------------------------------------
ENTRY_POINTS = [(kind, where) for kind in KNOWN for where in ("flag", "set", "config", "sweep")
                if where != "flag" or kind in FLAGS]


@pytest.mark.parametrize("kind,where", ENTRY_POINTS)
def test_an_unknown_name_is_one_line_listing_the_known_ones(tmp_path, kind, where):
    section, key = KEYS[kind]
    if where == "sweep":
        res = cli([sweep_file(tmp_path, {f"{section}.{key}": ["nope"]}), "--dry-run"], tmp_path,
                  module="decnode.tools.sweep.command")
        line = one_line(res, KNOWN[kind], prog="decnode-sweep")
        assert "cell" in line  # names the cell that gave it
        assert not (tmp_path / "sweeps").exists()
        return
    if where == "flag":
        args = [FLAGS[kind], "nope"]
    elif where == "set":
        args = ["--set", f"{section}.{key}=nope"]
    else:
        (tmp_path / "c.yaml").write_text(f"base: {BASE}\n{section}:\n  {key}: nope\n")
        args = ["--config", tmp_path / "c.yaml"]
    line = one_line(cli(["--nproc", "2", *args, "--print-config"], tmp_path), KNOWN[kind])
    if where == "config":
        assert "c.yaml" in line  # the file that gave the name


def test_a_name_only_a_plugin_registers_is_known_only_with_it(tmp_path):
    one_line(cli(["--nproc", "2", "--algo", "nocomm", "--print-config"], tmp_path),
             "unknown algorithm 'nocomm' (known: decpg, ps, ps_entropy, push_sum)")
    one_line(cli(["--nproc", "2", "--plugin", PLUGIN, "--algo", "nope", "--print-config"], tmp_path),
             "unknown algorithm 'nope' (known: decpg, ps, ps_entropy, push_sum, nocomm)")
    # the plugin named in a config file (run.plugins) or a sweep file's set, the algorithm anywhere else
    (tmp_path / "c.yaml").write_text(f"base: {BASE}\nrun:\n  plugins: [{PLUGIN}]\n")
    res = cli(["--nproc", "2", "--config", tmp_path / "c.yaml", "--set", "algo.name=nocomm", "--print-config"],
              tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "name: nocomm" in res.stdout and str(PLUGIN) in res.stdout
    one_line(cli([sweep_file(tmp_path, {"algo.name": ["nocomm", "nope"]}, **{"run.plugins": [str(PLUGIN)]}),
                  "--dry-run"], tmp_path, module="decnode.tools.sweep.command"),
             "unknown algorithm 'nope' (known: decpg, ps, ps_entropy, push_sum, nocomm)", prog="decnode-sweep")


@pytest.mark.parametrize("plugin,needle", [
    ("missing.py", "no such file"),
    ("no_such_module_xyz", "plugin 'no_such_module_xyz': no module named 'no_such_module_xyz'"),
    ("broken.py", "failed to import: ZeroDivisionError: division by zero (broken.py:2)"),
    ("twice.py", "algorithm 'ps' is registered twice"),
])
def test_a_bad_plugin_is_one_line(tmp_path, plugin, needle):
    (tmp_path / "broken.py").write_text("# a plugin with a bug\nx = 1 / 0\n")
    (tmp_path / "twice.py").write_text("from decnode.extensions import COMBINERS, CombinerEntry\n"
                                       "COMBINERS.register('ps', CombinerEntry('x:y'))\n")
    one_line(cli(["--nproc", "2", "--plugin", plugin, "--print-config"], tmp_path), needle)


# ---- the registry itself, in process --------------------------------------------------------------------------------
def test_registry_register_get_names_and_the_decorator():
    from decnode.config import ConfigError
    from decnode.registry import Registry

    reg = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    class B:
        pass

    assert reg.names() == ("a", "b") and reg.get("b") is B and "a" in reg and "c" not in reg and 3 not in reg
    reg.register("a", 1)  # the same entry again (a module imported twice): accepted
    with pytest.raises(ConfigError, match=r"^widget 'a' is registered twice"):
        reg.register("a", 2)
    with pytest.raises(ConfigError, match=r"^unknown widget 'c' \(known: a, b\)$"):
        reg.get("c")


def test_make_combiner_no_longer_sends_unknown_names_to_ps():
    from decnode.comm.fabric import Fabric
    from decnode.config import ConfigError
    from decnode.marl.combiners import DecPG, ParameterSharing, make_combiner
    from decnode.marl.critic import make_critic
    from decnode.timing import Section

    fabric = Fabric(2, 0)
    assert isinstance(make_combiner("decpg", fabric), DecPG) and make_combiner("decpg", fabric).name == Section.GOSSIP
    critic = make_combiner("ps_entropy", fabric, critic=True)
    assert isinstance(critic, ParameterSharing) and critic.name == Section.ALLREDUCE_CRITIC
    with pytest.raises(ConfigError, match="unknown algorithm 'sgd'"):
        make_combiner("sgd", fabric)
    with pytest.raises(ConfigError, match="unknown critic placement 'both'"):
        make_critic("both", fabric, algo="ps", state_dim=3, agent_id=False, seed=1)


def test_an_env_name_is_split_in_one_place():
    from decnode.config import ConfigError
    from decnode.extensions import env_agents, split_env_name

    assert split_env_name("smax:5m_vs_6m") == ("smax", "5m_vs_6m") and split_env_name("simple_spread") == (
        "simple_spread", "")
    assert env_agents("smac:10m_vs_11m") == 10 and env_agents("simple_spread") is None
    with pytest.raises(ConfigError, match="unknown SMAC map 'x'"):
        env_agents("smax:x")
    with pytest.raises(ConfigError, match="takes no ':<map>'"):
        env_agents("simple_spread:x")


# ---- a plugin's algorithm trains through the real CLI on 2 processes ------------------------------------------------
def _models(run: Path) -> dict:
    return torch.load(run / "models.pt", weights_only=False)


def test_a_plugin_combiner_trains_on_two_processes_and_its_agents_do_not_mix(tmp_path):
    """nocomm from tests/plugins/nocomm.py, local critics (nothing shared but the environments): 2 processes stop
    after iteration 1; the resume (one process holding both agents, no --plugin: config.yaml names it) finishes
    iteration 2. Bit for bit DecPG k=0 (no neighbour), not DecPG k=1 (which mixes), and the two agents differ."""
    common = ["--critic", "local", *TINY]
    res = cli(["--nproc", "2", "--plugin", PLUGIN, "--algo", "nocomm", "--out", tmp_path / "nocomm",
               "--set", "run.stop_after=1", *common], tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    recorded = (tmp_path / "nocomm" / "config.yaml").read_text()
    assert f"plugins:\n  - {PLUGIN}" in recorded and "name: nocomm" in recorded
    res = cli(["--resume", tmp_path / "nocomm"], tmp_path / "nocomm")  # another directory: the path is absolute
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    for k in (0, 1):
        res = cli(["--nproc", "2", "--algo", "decpg", "--k", str(k), "--out", tmp_path / f"decpg{k}", *common],
                  tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    alone, k0, k1 = (_models(tmp_path / name) for name in ("nocomm", "decpg0", "decpg1"))
    assert alone["iteration"] == 2 and alone["config"]["algo"]["name"] == "nocomm"
    assert torch.equal(alone["actor_rows"], k0["actor_rows"]) and torch.equal(alone["critic"], k0["critic"])
    assert not torch.equal(alone["actor_rows"], k1["actor_rows"])  # mixing shows: the comparison can fail
    assert (alone["actor_rows"][0] - alone["actor_rows"][1]).abs().max() > 1e-3
    metrics = [json.loads(line) for line in (tmp_path / "nocomm" / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2]
