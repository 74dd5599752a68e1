"""ConceptHierarchy: hand-worked DAG queries, the three builders (meta.mat in the devkit's exact struct layout,
TSV, dict), the synthetic world's hierarchy, and the errors for cycles and unknown nodes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from lit_explain.concepts.hierarchy import ConceptHierarchy, HierarchyError

# A miniature WordNet: "dog" has two parents (domestic animal, canine), like the real ILSVRC hierarchy.
#   entity(1001) > animal(1002) > {domestic(1003), canine(1004)}; domestic > {dog(1005), cat(3)};
#   canine > {dog(1005), wolf(4)}; dog > {beagle(1), pug(2)}; entity > rock(5)
SYNSETS = [  # (ILSVRC2012_ID, WNID, words, children IDs)
    (1, "n02088364", "beagle", []),
    (2, "n02110958", "pug, pug-dog", []),
    (3, "n02123045", "tabby, tabby cat", []),
    (4, "n02114367", "timber wolf", []),
    (5, "n09246464", "cliff, drop", []),
    (1001, "n00001740", "entity", [1002, 5]),
    (1002, "n00015388", "animal", [1003, 1004]),
    (1003, "n01317541", "domestic animal", [1005, 3]),
    (1004, "n02083346", "canine", [1005, 4]),
    (1005, "n02084071", "dog", [1, 2]),
]
W = {words.split(",")[0]: wnid for _i, wnid, words, _c in SYNSETS}


def write_meta_mat(path, synsets=SYNSETS, num_children_delta: dict | None = None):
    """The devkit's data/meta.mat layout: ``synsets`` is an (N, 1) struct array with these 8 fields."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    arr = np.zeros((len(synsets), 1), dtype=[(f, "O") for f in fields])
    for i, (sid, wnid, words, kids) in enumerate(synsets):
        n = len(kids) + (num_children_delta or {}).get(sid, 0)
        arr[i, 0] = (np.array([[sid]], dtype=np.uint16), np.array([wnid]), np.array([words]),
                     np.array([f"gloss of {words}"]), np.array([[n]], dtype=np.uint8),
                     np.array([kids], dtype=np.uint16).reshape(1, -1), np.array([[0]], dtype=np.uint8),
                     np.array([[1300 if not kids else 0]], dtype=np.uint16))
    savemat(str(path), {"synsets": arr})
    return path


def test_meta_mat_layout_is_the_devkits(tmp_path):
    raw = loadmat(str(write_meta_mat(tmp_path / "meta.mat")))["synsets"]
    assert raw.shape == (len(SYNSETS), 1)
    assert raw.dtype.names[:6] == ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children")
    assert raw[5, 0]["children"].tolist() == [[1002, 5]]


def test_meta_mat_dag_queries(tmp_path):
    h = ConceptHierarchy.from_meta_mat(write_meta_mat(tmp_path / "meta.mat"))
    assert len(h) == 10 and h.roots == (W["entity"],)
    # dog is reachable via domestic animal and canine: its leaves count once
    assert h.leaves(W["animal"]) == (W["beagle"], W["pug"], W["tabby"], W["timber wolf"])
    assert sorted(h.leaves(W["entity"])) == sorted([W["beagle"], W["pug"], W["tabby"], W["timber wolf"], W["cliff"]])
    assert h.leaves(W["beagle"]) == (W["beagle"],)
    assert set(h.parents(W["dog"])) == {W["domestic animal"], W["canine"]}
    assert h.depth(W["dog"]) == 3 and h.depth(W["beagle"]) == 4 and h.depth(W["cliff"]) == 1
    assert h.height(W["entity"]) == 4
    assert set(h.levels()[1]) == {W["animal"], W["cliff"]}
    assert set(h.siblings(W["dog"])) == {W["tabby"], W["timber wolf"]}
    assert h.sibling_groups()[W["canine"]] == (W["dog"], W["timber wolf"])
    assert h.name(W["dog"]) == "dog" and h.attrs(W["dog"])["ILSVRC2012_ID"] == 1005
    assert h.find("ILSVRC2012_ID", 1002) == W["animal"]
    assert set(h.ancestors(W["beagle"])) == {W[k] for k in ("dog", "domestic animal", "canine", "animal", "entity")}
    m = h.membership([W["canine"], W["domestic animal"]], [W["beagle"], W["tabby"], W["timber wolf"]])
    assert m.tolist() == [[True, False, True], [True, True, False]]


def test_meta_mat_errors_name_file_and_node(tmp_path):
    bad = SYNSETS[:-1] + [(1005, "n02084071", "dog", [1, 2, 77])]
    with pytest.raises(HierarchyError, match=r"meta\.mat.*n02084071.*unknown child.*77"):
        ConceptHierarchy.from_meta_mat(write_meta_mat(tmp_path / "meta.mat", bad))
    with pytest.raises(HierarchyError, match=r"meta2\.mat.*n02083346.*num_children=3 but 2"):
        ConceptHierarchy.from_meta_mat(write_meta_mat(tmp_path / "meta2.mat", num_children_delta={1004: 1}))
    with pytest.raises(FileNotFoundError, match="devkit"):
        ConceptHierarchy.from_meta_mat(tmp_path / "nope.mat")
    savemat(str(tmp_path / "other.mat"), {"x": np.zeros(2)})
    with pytest.raises(HierarchyError, match="no 'synsets'"):
        ConceptHierarchy.from_meta_mat(tmp_path / "other.mat")


def test_tsv_builder_and_errors(tmp_path):
    p = tmp_path / "h.tsv"
    p.write_text("# node\tparent\nanimal\t-\ndog\tanimal\ndog\tpet\npet\t\nbeagle\tdog\ncat\tpet\n")
    h = ConceptHierarchy.from_tsv(p)
    assert set(h.roots) == {"animal", "pet"} and h.leaves("pet") == ("beagle", "cat")
    assert h.leaves("animal") == ("beagle",) and h.depth("beagle") == 2
    p.write_text("animal\t-\ndog\tanimal\nbeagle\tdgo\n")
    with pytest.raises(HierarchyError, match=r"h\.tsv:3: unknown node 'dgo'"):
        ConceptHierarchy.from_tsv(p)
    p.write_text("a\tc\nb\ta\nc\tb\nroot\t-\nleaf\tc\n")
    with pytest.raises(HierarchyError, match=r"h\.tsv: the hierarchy has a cycle: (a -> b -> c -> a|b -> c -> a -> b|c -> a -> b -> c)"):
        ConceptHierarchy.from_tsv(p)
    p.write_text("a\tb\tc\n")
    with pytest.raises(HierarchyError, match=r"h\.tsv:1: expected 'node<TAB>parent'"):
        ConceptHierarchy.from_tsv(p)


def test_dict_builder_roundtrip_and_unknown_node():
    h = ConceptHierarchy.from_dict({"r": ["x", "y"], "x": ["a", "b", "a"], "y": ["b", "c"]})
    assert h.children("x") == ("a", "b")  # duplicate child dropped
    assert h.leaves("r") == ("a", "b", "c")
    assert ConceptHierarchy.from_dict(h.to_dict()).to_dict() == h.to_dict()
    with pytest.raises(HierarchyError, match=r"<dict>: unknown node 'z'"):
        h.leaves("z")
    with pytest.raises(HierarchyError, match=r"cycle: x -> x"):
        ConceptHierarchy.from_dict({"x": ["x"]})
    with pytest.raises(HierarchyError, match="list of node ids"):
        ConceptHierarchy.from_dict({"x": "ab"})
    with pytest.raises(HierarchyError, match="not a leaf"):
        h.membership(["r"], ["x"])


def test_world_hierarchy_levels_have_known_members():
    from lit_explain.synth.concepts import DEFAULT_CLASSES
    from lit_explain.synth.hierarchy import world_hierarchy

    h = world_hierarchy()
    assert h.roots == ("entity",)
    assert set(h.leaves("warm")) == {"red", "orange", "yellow", "pink"}
    assert set(h.leaves("cool")) == {"green", "cyan", "blue", "purple"}
    assert set(h.leaves("round")) == {"circle", "ring"}
    assert set(h.leaves("angular")) == {"square", "triangle", "diamond", "cross"}
    assert h.parents("rim") == ("part",) and h.parents("part") == ("object",)
    assert h.depth("circle") == 3 and h.depth("metal") == 2
    hc = world_hierarchy(DEFAULT_CLASSES)
    # "(yellow OR orange) AND triangle": a child of yellow, orange and triangle; "indoor AND NOT circle" not under circle
    assert set(hc.parents("warm_triangle")) == {"yellow", "orange", "triangle"}
    assert set(hc.leaves("round")) == {"red_circle", "night_ring"}
    assert set(hc.leaves("warm")) == {"red_circle", "warm_triangle"}  # purple is cool
    assert hc.leaves("circle") == ("red_circle",)
    assert set(hc.all_leaves()) == set(DEFAULT_CLASSES) and "pink" not in hc and "metal" not in hc
    with pytest.raises(ValueError, match="class 'bad'.*'circel'"):
        world_hierarchy({"bad": "circel AND red"})
