"""Reading an edge-list file (``topology.kind=file``).

Format: one undirected edge per line as two node ids ``i j`` separated by whitespace; ``#`` starts a
comment (whole line or trailing); blank lines are ignored; an edge listed twice, in either direction,
counts once. Node ids run 0..n-1 with n = topology.nodes, and every node must appear in some edge
(a single-node graph, n = 1, may have an empty file).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import TopologyError
from ..echo import shown


def _parse_id(token: str, where: str, n: int) -> int:
    try:
        node = int(token)
    except ValueError:
        raise TopologyError(f"{where}: node id {shown(token)} is not an integer; write each edge as two node ids "
                            "'i j' with 0 <= i, j < topology.nodes") from None
    if not 0 <= node < n:
        raise TopologyError(f"{where}: node id {node} is out of range 0..{n - 1} for topology.nodes={n}; "
                            "number the nodes 0..n-1 or set topology.nodes to the number of nodes in the file")
    return node


def parse_edge_list(text: str, n: int, source: str = "edge list") -> list[tuple[int, int]]:
    """The edges of ``text`` (as ``(min, max)`` pairs, duplicates dropped), validated against n nodes."""
    edges: dict[tuple[int, int], None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        where = f"{source} line {number}"
        if len(fields) != 2:
            raise TopologyError(f"{where}: expected two node ids 'i j', got {shown(line.strip())}")
        i, j = (_parse_id(token, where, n) for token in fields)
        if i == j:
            raise TopologyError(f"{where}: self-loop {i} {j}; list only links between different nodes "
                                "(the self weight w_ii comes from the mixing matrix)")
        edges[(min(i, j), max(i, j))] = None
    if n > 1:
        seen = {node for edge in edges for node in edge}
        missing = [node for node in range(n) if node not in seen]
        if missing:
            listed = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            raise TopologyError(
                f"{source}: nodes {listed} appear in no edge, but topology.nodes={n}; set topology.nodes to the "
                f"number of nodes in the file ({len(seen)} appear) and number them 0..n-1, or add their edges")
    return list(edges)


def read_edge_list(path: str | Path, n: int) -> list[tuple[int, int]]:
    """The validated edges of the file ``path`` (relative paths are relative to the working directory)."""
    path = Path(path)
    source = f"topology.path={shown(str(path))}"
    if not path.is_file():
        raise TopologyError(f"{source} does not exist (resolved to {shown(str(path.resolve()))}); "
                            "give the path of an edge-list file with one 'i j' pair per line")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise TopologyError(f"{source} is not a text file; give an edge list with one 'i j' pair per line") from None
    except OSError as exc:
        raise TopologyError(f"{source} cannot be read ({exc.strerror}); check the file's permissions") from None
    return parse_edge_list(text, n, source)
