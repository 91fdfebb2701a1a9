"""Hugepage pools, THP, and the guest's reservation from guestinit.hugepages=."""

from __future__ import annotations

import pytest
from conftest import CAPTURE_ROOT, Tree

from guestinit.init import params
from guestinit.init.gpu import hugepages
from guestinit.init.gpu import params as gpu_params
from guestinit.init.root import Root


def test_capture_pools_and_thp() -> None:
    root = Root(CAPTURE_ROOT)
    pools = hugepages.read_pools(root)
    rows = [(hugepages.size_name(p.size_kb), p.node, p.total) for p in pools]
    assert rows == [("2M", None, 0), ("1G", None, 0)]
    assert hugepages.thp(root) == {"enabled": "madvise", "defrag": "madvise"}


def test_per_node_pools(capture_tree: Tree) -> None:
    capture_tree.hugepages({2048: (64, 60)}, {0: {2048: 32, 1048576: 2}, 1: {2048: 32}})
    pools = hugepages.read_pools(Root(capture_tree.root))
    rows = [(hugepages.size_name(p.size_kb), p.node, p.total, p.free) for p in pools]
    assert rows == [
        ("2M", None, 64, 60),
        ("1G", None, 0, None),
        ("2M", 0, 32, 32),
        ("1G", 0, 2, 2),
        ("2M", 1, 32, 32),
    ]


def test_parse_requests() -> None:
    reqs = gpu_params.parse_requests("2M:512, 1G:4@0,1G:2@1")
    assert [str(r) for r in reqs] == ["2M:512", "1G:4@0", "1G:2@1"]
    assert reqs[1] == gpu_params.Request(1048576, 4, 0)
    assert gpu_params.parse_requests("2048k:1,1GiB:1")[0].size_kb == 2048


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2M", "'2M' is not SIZE:COUNT[@NODE] (e.g. 2M:512 or 1G:4@0)"),
        ("3X:1", "'3X' is not a page size (use 2M or 1G)"),
        ("2M:lots", "'2M:lots': count 'lots' is not a whole number"),
        ("1G:2@first", "'1G:2@first': NUMA node 'first' is not a whole number"),
        ("2M:1,2M:2", "2M:1 is given twice"),
        ("1G:4,1G:2@0", "1G is given both system-wide and per node: use one form"),
    ],
)
def test_bad_requests_name_the_input(text: str, message: str) -> None:
    with pytest.raises(params.ParamError) as err:
        gpu_params.parse_requests(text)
    assert str(err.value) == message


def test_cmdline_problem_not_exception() -> None:
    config = params.parse_cmdline("guestinit.hugepages=2M:x guestinit.thp=never")
    assert config["hugepages"] == ()
    assert config["thp"] == "never"
    assert config.problems == [
        "guestinit.hugepages=2M:x: '2M:x': count 'x' is not a whole number; using the default ()"
    ]


def test_reserve_writes_pools_largest_first(capture_tree: Tree) -> None:
    capture_tree.hugepages({2048: (0, 0), 1048576: (0, 0)}, {0: {1048576: 0}, 1: {1048576: 0}})
    root = Root(capture_tree.root)
    results = hugepages.reserve(root, gpu_params.parse_requests("2M:512,1G:2@1,1G:1@0,1G:3@7"))
    # results come in the order the pools were written: 1 GiB pages first
    assert [str(r) for r in results] == [
        "hugepages 1G:1@0: ok",
        "hugepages 1G:2@1: ok",
        "hugepages 1G:3@7: no 1G pool on node 7 in this kernel",
        "hugepages 2M:512: ok",
    ]
    assert [r.ok for r in results] == [True, True, False, True]
    node = capture_tree.root / "sys/devices/system/node"
    assert (node / "node0/hugepages/hugepages-1048576kB/nr_hugepages").read_text() == "1\n"
    assert (node / "node1/hugepages/hugepages-1048576kB/nr_hugepages").read_text() == "2\n"
    pools = capture_tree.root / "sys/kernel/mm/hugepages"
    assert (pools / "hugepages-2048kB/nr_hugepages").read_text() == "512\n"
    # the 1 GiB system-wide pool was not asked for and is left alone
    assert (pools / "hugepages-1048576kB/nr_hugepages").read_text() == "0\n"


def test_set_thp(capture_tree: Tree) -> None:
    root = Root(capture_tree.root)
    assert hugepages.set_thp(root, "keep") == ""
    assert hugepages.set_thp(root, "never") == ""
    assert (capture_tree.root / "sys/kernel/mm/transparent_hugepage/enabled").read_text() == "never\n"
