"""The topology zoo against its definitions (numpy only, fast): every named graph's weights, exp1peer's exact
average, graphs read from a file against the same graphs built by name, Metropolis weights, the one-line refusals,
and the decnode-topology command (its table, its errors, its figure)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from decnode.topology import GraphError, build_graph, check_graph, mixing_matrix

NAMED = ["knn", "ring", "complete", "exp", "exp1peer", "torus", "random_regular"]
SIZES = [4, 6, 8, 9, 10, 12, 16]


def named(name: str, n: int):
    """The graph `name` for n agents, or None where it has no such graph (a torus of prime n, d-regular odd n·d)."""
    try:
        return build_graph(name, n, k=4 if n > 4 else 2, degree=4 if n > 4 else 2, seed=n)
    except GraphError:
        assert name in ("torus", "random_regular"), name
        return None


def one_line(err: pytest.ExceptionInfo, *needles: str) -> str:
    text = str(err.value)
    assert "\n" not in text and text == text.strip(), text
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def write_edges(path, graph, undirected: bool):
    """graph's rounds as an edge-list file: one block per round, `i j` or `i -> j` per edge."""
    blocks = []
    for W in graph.phases:
        A = (W != 0) & ~np.eye(graph.n, dtype=bool)
        if undirected:
            lines = [f"{j} {i}" for i, j in zip(*np.nonzero(A)) if j < i]
        else:
            lines = [f"{j} -> {i}" for i, j in zip(*np.nonzero(A))]  # row i receives from j
        blocks.append("\n".join(lines))
    path.write_text(f"# {graph.name}, n={graph.n}\n" + "\n\n".join(blocks) + "\n")
    return f"file:{path}"


def write_matrix(path, graph):
    """graph's rounds as weight matrices, every float written exactly (repr round-trips)."""
    blocks = ["\n".join(" ".join(repr(float(w)) for w in row) for row in W) for W in graph.phases]
    path.write_text("\n\n".join(blocks) + "\n")
    return f"file:{path}"


# ---- weights ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMED)
@pytest.mark.parametrize("n", SIZES)
def test_rows_sum_to_one_and_regular_graphs_are_doubly_stochastic(name, n):
    g = named(name, n)
    if g is None:
        return
    for W in g.phases:
        assert W.dtype == np.float64 and W.shape == (n, n) and (W >= 0).all()
        np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)  # every one is regular: uniform is doubly stochastic
    check_graph(g, stochastic="doubly", algorithm="decpg")
    assert g.diameter() is not None


def test_shapes_and_degrees():
    assert build_graph("torus", 16).in_degree() == 4 and build_graph("torus", 16).diameter() == 4  # 4×4
    assert build_graph("torus", 12).diameter() == 3  # 3×4: 1 + 2
    assert build_graph("torus:2x6", 12).in_degree() == 3  # a side of 2: one neighbour along it
    assert not build_graph("torus:3x4", 12).directed
    np.testing.assert_array_equal(build_graph("torus:4x3", 12).phases[0] != 0, build_graph("torus:4x3", 12).union
                                  | np.eye(12, dtype=bool))
    for d in (2, 3, 5):
        g = build_graph("random_regular", 10, degree=d, seed=7)
        assert (g.union.sum(axis=1) == d).all() and not g.directed and g.diameter() is not None
    same = build_graph("random_regular", 16, degree=3, seed=7).phases[0]
    np.testing.assert_array_equal(same, build_graph("random_regular", 16, degree=3, seed=7).phases[0])
    assert not np.array_equal(same, build_graph("random_regular", 16, degree=3, seed=8).phases[0])
    assert build_graph("exp", 10).in_degree() == 4 and build_graph("exp1peer", 10).period == 4


@pytest.mark.parametrize("n", range(1, 13))
def test_knn_is_the_papers_matrix_bit_for_bit(n):
    for k in range(n):
        g = build_graph("knn", n, k=k)
        assert g.period == 1 and g.k == k
        assert np.array_equal(g.phases[0], mixing_matrix(n, k)), (n, k)


@pytest.mark.parametrize("n", [8, 16])
def test_exp1peer_reaches_the_exact_average_in_log2_n_rounds(n):
    g = build_graph("exp1peer", n)
    assert g.period == int(np.log2(n))
    theta = np.random.default_rng(n).normal(size=(n, 5))
    x = theta.copy()
    for t in range(g.period):
        x = g.matrix(t) @ x
    np.testing.assert_allclose(x, np.broadcast_to(theta.mean(axis=0), x.shape), rtol=0, atol=1e-12)
    assert g.period_gap() == pytest.approx(1.0, abs=1e-12)
    x = theta.copy()
    for t in range(g.period - 1):  # one round short is not the average
        x = g.matrix(t) @ x
    assert np.abs(x - theta.mean(axis=0)).max() > 1e-3


def test_exp1peer_period_product_for_n_10_is_not_exact():
    g = build_graph("exp1peer", 10)
    prod = np.eye(10)
    for W in g.phases:
        prod = W @ prod
    assert np.abs(prod - 1 / 10).max() > 1e-3
    assert 0.0 < g.period_gap() < 1.0 - 1e-3
    assert min(g.gaps()) < 1e-12  # hops 2 and 4 alone split 10 agents into cycles: each round alone never mixes all


@pytest.mark.parametrize("degree", [3, 4])
def test_metropolis_on_random_regular_is_symmetric_doubly_stochastic(degree):
    g = build_graph("random_regular", 12, degree=degree, seed=3, weights="metropolis")
    W = g.phases[0]
    np.testing.assert_array_equal(W, W.T)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(W[g.union], 1 / (degree + 1))  # regular: Metropolis is uniform
    check_graph(g, stochastic="doubly", algorithm="decpg")


def test_metropolis_on_an_irregular_file_graph(tmp_path):
    # a star 0–1, 0–2, 0–3 with a tail 3–4–5: degrees 3, 1, 1, 2, 2, 1
    (tmp_path / "g.txt").write_text("0 1\n0 2\n0 3   # the hub\n3 4\n4 5\n")
    uniform = build_graph(f"file:{tmp_path / 'g.txt'}", 6)
    assert not uniform.doubly_stochastic
    g = build_graph(f"file:{tmp_path / 'g.txt'}", 6, weights="metropolis")
    W = g.phases[0]
    np.testing.assert_array_equal(W, W.T)
    np.testing.assert_allclose(W.sum(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(W.sum(axis=1), 1.0, atol=1e-12)
    assert W[0, 3] == 1 / 4 and W[3, 4] == 1 / 3 and W[4, 5] == 1 / 3 and W[1, 0] == 1 / 4
    assert W[1, 1] == 3 / 4 and (W >= 0).all()
    check_graph(g, stochastic="doubly", algorithm="decpg")


# ---- files --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,n", [("torus", 16), ("torus:2x5", 10), ("exp", 10), ("exp", 16), ("exp1peer", 8),
                                    ("exp1peer", 10), ("random_regular", 12), ("knn", 9)])
def test_a_file_graph_equals_the_named_graph(tmp_path, spec, n):
    g = build_graph(spec, n, k=3, degree=3, seed=1)
    from_edges = build_graph(write_edges(tmp_path / "edges.txt", g, undirected=not g.directed), n)
    from_matrix = build_graph(write_matrix(tmp_path / "matrix.txt", g), n)
    for other in (from_edges, from_matrix):
        assert other.period == g.period and other.directed == g.directed
        for W, V in zip(g.phases, other.phases):
            assert np.array_equal(W, V), spec
    if not g.directed:  # an undirected graph also reads as `i -> j` both ways
        twice = build_graph(write_edges(tmp_path / "both.txt", g, undirected=False), n)
        assert all(np.array_equal(W, V) for W, V in zip(g.phases, twice.phases))


def test_file_format_details(tmp_path):
    f = tmp_path / "g.txt"
    # comments, inline comments, `->` without spaces, repeated blank lines and a comment line inside a round
    f.write_text("# a ring of 3, then a one-way triangle\n\n\n0 1\n# still round 0\n1 2\n2 0 # closes it\n\n\n"
                 "0->1\n1 ->2\n2-> 0\n\n")
    g = build_graph(f"file:{f}", 3)
    assert g.period == 2 and g.phases[0][0, 1] == 1 / 3 and g.phases[1][1, 0] == 1 / 2 and g.phases[1][0, 1] == 0
    f.write_text("0.5 0.5\n0.5 0.5\n")  # a 2-node matrix, written with decimals
    assert np.array_equal(build_graph(f"file:{f}", 2).phases[0], np.full((2, 2), 0.5))


# ---- refusals: one line, naming the node, the line or the file ----------------------------------------------------
def test_not_strongly_connected_names_the_node(tmp_path):
    f = tmp_path / "chain.txt"
    f.write_text("0 -> 1\n1 -> 2\n2 -> 3\n")
    with pytest.raises(GraphError) as err:
        check_graph(build_graph(f"file:{f}", 4), stochastic="row", algorithm="decpg")
    one_line(err, "not strongly connected", "node 1's parameters never reach node 0")
    f.write_text("0 1\n\n2 3\n")  # time-varying, two halves that never meet
    with pytest.raises(GraphError) as err:
        check_graph(build_graph(f"file:{f}", 4), stochastic="row", algorithm="decpg")
    one_line(err, "over one period", "node")


def test_a_row_not_summing_to_one_names_the_node(tmp_path):
    f = tmp_path / "w.txt"
    f.write_text("0.5 0.5 0\n0.25 0.5 0.25\n0 0.5 0.4\n")
    with pytest.raises(GraphError) as err:
        check_graph(build_graph(f"file:{f}", 3), stochastic="row", algorithm="decpg")
    one_line(err, "node 2's weights sum to 0.9")


def test_dsgd_on_uniform_weights_of_an_irregular_graph_names_the_fix(tmp_path):
    f = tmp_path / "star.txt"
    f.write_text("0 1\n0 2\n0 3\n")
    with pytest.raises(GraphError) as err:
        check_graph(build_graph(f"file:{f}", 4), stochastic="doubly", algorithm="decpg")
    one_line(err, "decpg needs doubly stochastic weights", "node 0's parameters", "algo.weights=metropolis")
    f.write_text("0 -> 1\n1 -> 2\n2 -> 0\n0 -> 2\n")  # directed and irregular: only push-sum can use it
    with pytest.raises(GraphError) as err:
        check_graph(build_graph(f"file:{f}", 3), stochastic="doubly", algorithm="decpg")
    one_line(err, "decpg needs doubly stochastic weights", "--algo push_sum accepts a directed graph")
    with pytest.raises(GraphError) as err:
        build_graph(f"file:{f}", 3, weights="metropolis")
    one_line(err, "Metropolis–Hastings weights need an undirected graph", "node")


@pytest.mark.parametrize("spec,n,degree,needles", [
    ("torus", 7, 3, ["n=7 is prime", "torus:RxC"]),
    ("torus", 13, 3, ["n=13 is prime"]),
    ("torus:3x3", 10, 3, ["3×3 = 9 nodes", "n=10"]),
    ("torus:4", 4, 3, ["RxC"]),
    ("random_regular", 9, 3, ["n·d = 9·3 is odd"]),
    ("random_regular", 6, 6, ["degree must be an integer in [1, 5]"]),
    ("random_regular", 6, 1, ["degree 1"]),
    ("file", 4, 3, ["file:PATH"]),
    ("nope", 4, 3, ["unknown topology 'nope'", "torus", "file"]),
    ("exp:3", 4, 3, ["takes no argument"]),
])
def test_bad_names_and_shapes_are_one_line(spec, n, degree, needles):
    with pytest.raises(GraphError if spec != "nope" else ValueError) as err:
        build_graph(spec, n, degree=degree)
    one_line(err, *needles)


@pytest.mark.parametrize("text,n,needles", [
    ("0 1\n1 2\n2 x\n", 3, ["line 3", "'x'"]),
    ("0 1\n1 2 3\n", 3, ["line 2", "expected 'i j'"]),
    ("0 1\n\n# c\n1 -> \n", 3, ["line 4"]),
    ("0 1\n1 1\n", 3, ["line 2", "to itself"]),
    ("0 1\n1 12\n", 10, ["line 2", "node 12", "n=10"]),
    ("0 1\n1 2\n", 10, ["nodes 0..2 (3 nodes)", "n=10"]),
    ("0.5 0.5 0\n0.5 0.5\n0 0 1\n", 3, ["line 2", "2 weights", "line 1"]),
    ("0.5 0.5 0\n0.5 0.5 nan\n0 0 1\n", 3, ["line 2", "not finite"]),
    ("0.5 0.5 zero\n", 3, ["line 1"]),
    ("1.0 0 0\n0 1.0 0\n0 0 1.0\n", 4, ["3 nodes", "n=4"]),
    ("# nothing\n\n", 3, ["no edge or weight"]),
])
def test_a_bad_file_is_one_line_naming_the_file_and_line(tmp_path, text, n, needles):
    f = tmp_path / "g.txt"
    f.write_text(text)
    with pytest.raises(GraphError) as err:
        build_graph(f"file:{f}", n)
    one_line(err, f"file:{f}", *needles)


def test_a_missing_or_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(GraphError) as err:
        build_graph(f"file:{tmp_path / 'none.txt'}", 3)
    one_line(err, "none.txt: no such file")
    with pytest.raises(GraphError) as err:
        build_graph(f"file:{tmp_path}", 3)
    one_line(err, "is a directory")
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(GraphError) as err:
        build_graph(f"file:{tmp_path / 'bin'}", 3)
    one_line(err, "not a text file")


# ---- decnode-topology ---------------------------------------------------------------------------------------------
def table_rows(out: str) -> dict[str, list[str]]:
    """The command's table: graph name -> its cells (the header line and the sentence above it left out)."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("graph "))
    return {line.split()[0]: line.split() for line in lines[header + 1:]
            if line.strip() and not line.startswith("wrote")}


def test_the_command_prints_one_row_per_graph(capsys):
    from decnode.tools.topology import main

    main(["knn", "torus", "exp1peer", "--n", "16", "--procs", "4", "--dim", "1000"])
    out = capsys.readouterr().out
    assert "n=16 agents on 4 processes (4 each), uniform weights" in out and "a row: 1,000 float32 parameters" in out
    rows = table_rows(out)
    assert list(rows) == ["knn", "torus", "exp1peer"]
    # n, period, directed, doubly stochastic, in-degree, diameter, gap per round, gap of period, messages, bytes.
    # By hand, 4 processes of 4 agents: knn (k=4) sends the 2 edge rows of a block to each neighbouring block (8
    # messages, 16 rows); the 4×4 torus's process holds a grid row and sends all 4 to the rows above and below
    # (8 messages, 32 rows); exp1peer's hop 1, 2, 4, 8 sends 1, 2, 4, 4 rows to one block each (4 messages).
    assert rows["knn"][1:] == ["16", "1", "no", "yes", "4", "4", "0.148", "0.148", "8", f"{16 * 4000 + 8 * 64:,}"]
    assert rows["torus"][1:] == ["16", "1", "no", "yes", "4", "4", "0.400", "0.400", "8", f"{32 * 4000 + 8 * 64:,}"]
    gap = 1 - np.cos(np.pi / 16)  # hop 1 alone: (I + shift)/2; hops 2, 4, 8 alone leave the agents apart (gap 0)
    assert rows["exp1peer"][1:] == ["16", "4", "yes", "yes", "1", "4", f"0.000–{gap:.3f}", "1.000", "4",
                                    f"{4 * 4000 + 4 * 64:,}–{16 * 4000 + 4 * 64:,}"]


def test_the_row_defaults_to_the_simple_spread_actor(capsys):
    from decnode.tools.topology import main

    main(["ring", "--n", "4"])
    out = capsys.readouterr().out
    H, obs, actions = 64, 6 * 4, 5  # 3 Linear, a GRU, a Linear, the output layer
    dim = (obs * H + H) + 2 * (H * H + H) + (2 * 3 * H * H + 6 * H) + (H * H + H) + (H * actions + actions)
    assert f"a row: {dim:,} float32 parameters (simple_spread actor, hidden 64)" in out
    assert table_rows(out)["ring"][-2:] == ["8", f"{8 * (dim * 4 + 64):,}"]  # one agent per process, 2 each way


@pytest.mark.parametrize("argv,needle", [
    (["nope", "--n", "8"], "unknown topology 'nope' (known: "),
    (["torus", "--n", "7"], "n=7 is prime"),
    (["ring", "--n", "8", "--procs", "3"], "--procs 3 must divide n=8"),
    (["ring", "--n", "8", "--weights", "best"], "argument --weights: invalid choice"),
    (["ring", "--n", "8", "--env", "smax:5m_vs_6m"], "--env smax:5m_vs_6m has 5 agents, but --n is 8"),
    (["ring", "--n", "8", "--env", "nope"], "unknown environment 'nope'"),
])
def test_the_command_refuses_in_one_line(argv, needle):
    size = [] if "--env" in argv else ["--dim", "10"]
    done = subprocess.run([sys.executable, "-m", "decnode.tools.topology", *argv, *size],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("decnode-topology: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert needle in done.stderr


def edges_drawn(ax) -> int:
    """Edges a panel draws: line segments both ways, and arcs (wrap-around) or arrows (one way)."""
    lines = sum(len(c.get_segments()) for c in ax.collections if c.get_gid() == "edges")
    return lines + sum(1 for p in ax.patches if p.get_gid() == "edge")


def test_draw_one_panel_per_graph(tmp_path, saved_figures, capsys):
    from decnode.tools.topology import main

    out = tmp_path / "graphs.png"
    main(["knn", "torus", "exp1peer", "--n", "8", "--dim", "10", "--draw", str(out)])
    assert out.is_file() and out.stat().st_size > 0 and f"wrote {out}" in capsys.readouterr().out
    fig = saved_figures["graphs.png"]
    knn, torus, exp1peer = fig.axes
    assert [ax.get_title().split()[0] for ax in fig.axes] == ["knn", "torus", "exp1peer"]
    assert edges_drawn(knn) == 8 * 4 // 2  # k = 4: each agent with i±1, i±2
    assert edges_drawn(torus) == 8 * 3 // 2  # 2×4: one neighbour across the side of 2
    assert sum(1 for p in torus.patches if p.get_gid() == "edge") == 2  # the rows' wrap-around 0–3, 4–7 as arcs
    assert edges_drawn(exp1peer) == 8 + 8 + 4  # hops 1 and 2 one way; hop 4 both ways
    assert [t.get_text() for t in exp1peer.get_legend().get_texts()] == ["round 0", "round 1", "round 2"]
    assert len(knn.collections[-1].get_offsets()) == 8  # the nodes
    main(["ring", "--n", "8", "--dim", "10", "--draw", str(out)])  # its own figure: replaced
    assert len(saved_figures["graphs.png"].axes) == 1


def test_draw_never_replaces_a_file_decnode_did_not_write(tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"a user's figure")
    done = subprocess.run([sys.executable, "-m", "decnode.tools.topology", "ring", "--n", "4", "--dim", "10",
                           "--draw", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1
    assert "exists and decnode did not write it" in done.stderr
    assert out.read_bytes() == b"a user's figure"


def test_doubly_stochastic_means_what_check_graph_accepts(tmp_path):
    """Graph.doubly_stochastic (the manifest, the command's column) and check_graph use the same tolerance: a column
    1e-7 off is neither (np.allclose's default rtol would have called it doubly stochastic)."""
    f = tmp_path / "w.txt"
    f.write_text("0.5000001 0.4999999\n0.5 0.5\n")
    g = build_graph(f"file:{f}", 2)
    assert not g.doubly_stochastic
    with pytest.raises(GraphError) as err:
        check_graph(g, stochastic="doubly", algorithm="decpg")
    one_line(err, "node 0's parameters sum to 1")


def test_the_readme_examples_of_the_file_format_read_as_documented(tmp_path):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    examples = {}
    for kind in ("an edge list", "a weight matrix"):
        start = readme.index(f"```text\n# {kind}") + len("```text\n")
        (tmp_path / "g.txt").write_text(readme[start: readme.index("```", start)])
        examples[kind] = g = build_graph(f"file:{tmp_path / 'g.txt'}", 3)
        check_graph(g, stochastic="row", algorithm="decpg")
    edges = examples["an edge list"].phases[0]
    # 0 hears 1 and 2 (1/3 each), 1 hears 0, 2 hears 1 (1/2 each); 1 never hears 2 nor 2 hears 0
    assert edges[0, 1] == edges[0, 2] == 1 / 3 and edges[1, 0] == edges[2, 1] == 1 / 2
    assert edges[1, 2] == edges[2, 0] == 0
    np.testing.assert_array_equal(examples["a weight matrix"].phases[0], [[.5, .5, 0], [.25, .5, .25], [0, .5, .5]])


def test_strong_connectivity_agrees_with_the_transitive_closure_on_random_digraphs():
    """unreachable() searches from node 0 both ways; the closure (reach ← reach ∨ reach·reach) is the definition.
    Both name the first (i, j) in row order whose j never reaches i."""
    from decnode.topology.api import unreachable

    def closure(A):
        reach = np.eye(len(A), dtype=bool) | A
        for _ in range(len(A)):
            reach = reach | (reach.astype(float) @ reach.astype(float) > 0)
        bad = np.argwhere(~reach)
        return (int(bad[0][0]), int(bad[0][1])) if len(bad) else None

    rng, seen = np.random.default_rng(0), set()
    for _ in range(2000):
        n = int(rng.integers(1, 9))
        A = rng.random((n, n)) < rng.random() * 0.5
        assert unreachable(A) == closure(A), A.astype(int)
        seen.add(closure(A) is None)
    assert seen == {True, False}  # both answers were tested
