"""Loaders of the raw formats (tiny files written here), RecDataset checks, images; real shared data when present."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import require_shared_data

from speeder_hf.data import (
    DataFormatError,
    RecDataset,
    attach_images,
    compose_text,
    load_amazon_2014,
    load_amazon_2023,
    load_dataset_by_name,
    load_llara_samples,
    load_movielens,
    load_s3rec,
    movielens_posters,
)


def write(path: Path, lines: list[str], gz: bool = False) -> Path:
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def sequences_of(rec: RecDataset) -> dict[str, list[str]]:
    ids = rec.items["item_id"][:]
    return {u: [ids[i] for i in seq] for u, seq in zip(rec.sequences["user_id"][:], rec.sequences["items"][:])}


def test_s3rec_sequences_metadata_and_order(tmp_path):
    seq = write(tmp_path / "Toy.txt", ["1 1 2 3", "2 4 2 10"])
    items = write(
        tmp_path / "items.jsonl",
        [
            json.dumps({"item_id": 1, "title": "Red Lipstick", "categories": [["Beauty", "Makeup"]]}),
            json.dumps({"item_id": 10, "title": None, "idgenrec_keywords": "soap bar"}),
            json.dumps({"item_id": 99, "title": "never bought"}),
        ],
    )
    rec = load_s3rec(seq, items)
    assert rec.name == "Toy"
    # numeric id order, only items that occur
    assert rec.items["item_id"][:] == ["1", "2", "3", "4", "10"]
    assert sequences_of(rec) == {"1": ["1", "2", "3"], "2": ["4", "2", "10"]}
    assert rec.items[0]["text"] == "Red Lipstick. Beauty > Makeup."
    assert rec.items[4]["title"] is None and rec.items[4]["text"] == "soap bar."
    assert not rec.has_timestamps


def test_s3rec_names_items_by_their_dataset_id_in_the_same_rows(tmp_path):
    seq = write(tmp_path / "Toy.txt", ["1 1 2 3", "2 3 10"])
    records = [{"item_id": n, "asin": f"B00{n}", "title": f"item {n}"} for n in (1, 2, 3, 10, 99)]
    items = write(tmp_path / "items.jsonl", [json.dumps(r) for r in records])
    rec = load_s3rec(seq, items)
    # ASINs name the items; the rows stay in the sequence file's numeric order.
    assert rec.items["item_id"][:] == ["B001", "B002", "B003", "B0010"]
    assert rec.items["title"][:] == ["item 1", "item 2", "item 3", "item 10"]
    assert sequences_of(rec) == {"1": ["B001", "B002", "B003"], "2": ["B003", "B0010"]}
    assert load_s3rec(seq, items, id_field=None).items["item_id"][:] == ["1", "2", "3", "10"]


@pytest.mark.parametrize(
    ("records", "problem"),
    [
        ([{"item_id": 1, "asin": "B1"}, {"item_id": 2}], "item 2 of the sequences has none"),
        ([{"item_id": 1, "asin": "B1"}, {"item_id": 2, "asin": "B1"}], "'B1' of item 2 is also that of item 1"),
    ],
)
def test_s3rec_dataset_ids_must_name_every_item_once(tmp_path, records, problem):
    seq = write(tmp_path / "Toy.txt", ["1 1 2"])
    items = write(tmp_path / "items.jsonl", [json.dumps(r) for r in records])
    with pytest.raises(DataFormatError, match=problem):
        load_s3rec(seq, items)


@pytest.mark.parametrize(
    ("line", "problem"), [("7", "expected 'user_id item_id"), ("7 3 x", "'x' is not a non-negative integer")]
)
def test_s3rec_malformed_line_names_file_and_line(tmp_path, line, problem):
    path = write(tmp_path / "bad.txt", ["1 1 2", line])
    with pytest.raises(DataFormatError, match=rf"bad.txt, line 2: {problem}"):
        load_s3rec(path)


def test_amazon_2014_sorts_by_time_parses_python_meta_and_unescapes(tmp_path):
    reviews = write(
        tmp_path / "reviews_Beauty_5.json.gz",
        [
            json.dumps({"reviewerID": "u1", "asin": "B2", "unixReviewTime": 200}),
            json.dumps({"reviewerID": "u1", "asin": "B1", "unixReviewTime": 100}),
            json.dumps({"reviewerID": "u2", "asin": "B1", "unixReviewTime": 100}),
            json.dumps({"reviewerID": "u1", "asin": "B3", "unixReviewTime": 200}),  # same day: file order
        ],
        gz=True,
    )
    meta = write(
        tmp_path / "meta_Beauty.json.gz",
        [
            "{'asin': 'B1', 'title': 'Soap &amp; Gel', 'categories': [['Beauty', 'Bath']], 'brand': 'Acme'}",
            "{'asin': 'B2', 'description': 'A brush.'}",
        ],
        gz=True,
    )
    rec = load_amazon_2014(reviews, meta)
    assert rec.name == "Beauty"
    assert sequences_of(rec) == {"u1": ["B1", "B2", "B3"], "u2": ["B1"]}
    assert rec.sequences[0]["timestamps"] == [100, 200, 200]
    assert rec.items["item_id"][:] == ["B1", "B2", "B3"]  # metadata order first, then the rest
    assert rec.items[0]["title"] == "Soap & Gel"
    assert rec.items[0]["text"] == "Soap & Gel. Brand: Acme. Beauty > Bath."
    assert rec.items[1]["title"] is None and rec.items[1]["text"] == "A brush."


def test_amazon_2014_missing_field_is_reported(tmp_path):
    reviews = write(tmp_path / "r.json", [json.dumps({"reviewerID": "u1", "unixReviewTime": 1})])
    with pytest.raises(DataFormatError, match=r"r.json, line 1: missing field 'asin'"):
        load_amazon_2014(reviews)


def test_amazon_2023_parent_asin_dedup_ms_and_core(tmp_path):
    def review(user, item, ms):
        return json.dumps({"user_id": user, "parent_asin": item, "asin": item + "x", "timestamp": ms, "rating": 5})

    reviews = write(
        tmp_path / "All_Beauty.jsonl",
        [review("a", "P1", 3000), review("a", "P2", 1000), review("a", "P1", 5000), review("b", "P1", 2000),
         review("b", "P2", 4000), review("c", "P3", 1000)],
    )  # fmt: skip
    meta = write(
        tmp_path / "meta_All_Beauty.jsonl",
        [json.dumps({"parent_asin": "P1", "title": "Cream", "store": "Shop", "features": ["soft", "rich"],
                     "description": ["Smooth."]})],
    )  # fmt: skip
    rec = load_amazon_2023(reviews, meta, min_user_interactions=2, min_item_interactions=2)
    assert rec.name == "All_Beauty"
    # duplicate (a, P1) dropped; user c and item P3 removed by the 2-core
    assert sequences_of(rec) == {"a": ["P2", "P1"], "b": ["P1", "P2"]}
    assert rec.sequences[0]["timestamps"] == [1, 3]
    assert rec.items[0]["text"] == "Cream. Store: Shop. soft, rich. Smooth."


def test_k_core_is_iterative():
    # Removing item z (1 user) leaves user 3 with one item, which then drops item y below 2 users.
    events = [("1", "x", 1), ("1", "w", 2), ("2", "x", 1), ("2", "w", 2), ("3", "y", 1), ("3", "z", 2), ("4", "y", 1)]
    rec = RecDataset.from_interactions("t", events, min_user_interactions=2, min_item_interactions=2)
    assert sequences_of(rec) == {"1": ["x", "w"], "2": ["x", "w"]}
    with pytest.raises(ValueError, match="no user is left"):
        RecDataset.from_interactions("t", events[:1], min_user_interactions=2)


def test_mixed_timestamps_rejected():
    with pytest.raises(ValueError, match="some interactions have a timestamp and some do not"):
        RecDataset.from_interactions("t", [("u", "a", 1), ("u", "b", None)])


def test_movielens_100k_and_1m_formats(tmp_path):
    flags = ["0"] * 19
    comedy = flags.copy()
    comedy[5] = "1"
    write(tmp_path / "u.data", ["1\t20\t4\t300", "1\t10\t5\t100", "2\t10\t1\t50"])
    write(tmp_path / "u.item", ["10|Toy Story (1995)|01-Jan-1995||url|" + "|".join(comedy),
                                "20|Heat (1995)|01-Jan-1995||url|" + "|".join(flags)])  # fmt: skip
    rec = load_movielens(tmp_path / "u.data", tmp_path / "u.item", min_rating=2)
    assert sequences_of(rec) == {"1": ["10", "20"]}
    assert rec.items[0]["text"] == "Toy Story (1995). Genres: Comedy."
    assert rec.items[1]["text"] == "Heat (1995)."

    write(tmp_path / "ratings.dat", ["5::7::3::20", "5::8::3::10"])
    write(tmp_path / "movies.dat", ["7::Alien (1979)::Horror|Sci-Fi", "8::Up (2009)::Animation"])
    rec = load_movielens(tmp_path / "ratings.dat", tmp_path / "movies.dat")
    assert sequences_of(rec) == {"5": ["8", "7"]}
    assert rec.items["title"][:] == ["Alien (1979)", "Up (2009)"]
    write(tmp_path / "bad.dat", ["5::7::3"])
    with pytest.raises(DataFormatError, match="bad.dat, line 1: expected 4 fields"):
        load_movielens(tmp_path / "bad.dat")


def test_rec_dataset_rejects_bad_tables():
    good = RecDataset.from_sequences("t", {"u": ["a", "b"]})
    with pytest.raises(ValueError, match="user 'v' has item index 5, but there are 2 items"):
        RecDataset("t", good.items, good.sequences.add_item({"user_id": "v", "items": [5]}))
    with pytest.raises(ValueError, match="user 'v' has an empty sequence"):
        RecDataset("t", good.items, good.sequences.add_item({"user_id": "v", "items": []}))
    with pytest.raises(ValueError, match="user 'u' has more than one sequence"):
        RecDataset("t", good.items, good.sequences.add_item({"user_id": "u", "items": [0]}))
    with pytest.raises(ValueError, match="item_id 'a' appears more than once"):
        RecDataset("t", good.items.add_item({"item_id": "a"}), good.sequences)
    with pytest.raises(KeyError, match="user 'u' has item 'c', which is not in item_ids"):
        RecDataset.from_sequences("t", {"u": ["a", "c"]}, item_ids=["a", "b"])


def test_save_load_roundtrip(tmp_path):
    rec = RecDataset.from_interactions("t", [("u", "a", 5), ("u", "b", 7), ("v", "b", 1)], {"a": {"title": "A"}})
    rec.save(tmp_path / "saved")
    again = RecDataset.load(tmp_path / "saved")
    assert again.name == "t"
    assert again.items.to_dict() == rec.items.to_dict()
    assert again.sequences.to_dict() == rec.sequences.to_dict()


def test_compose_text():
    assert compose_text(None, None, "") is None
    assert compose_text("Wow!", ["a", "b"], [["x", "y"], ["z"]]) == "Wow! a, b. x > y; z."


def test_attach_images_from_folder_table_and_mapping(tmp_path):
    rec = RecDataset.from_sequences("t", {"u": ["a", "b", "c"]})
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"x")
    (folder / "c.PNG").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    assert attach_images(rec, folder).items["image_path"][:] == [str(folder / "a.jpg"), None, str(folder / "c.PNG")]

    write(tmp_path / "paths.csv", ["item_id,image_path", "b,imgs/a.jpg", "zzz,imgs/a.jpg"])
    assert attach_images(rec, tmp_path / "paths.csv").items["image_path"][:] == [None, str(folder / "a.jpg"), None]
    assert attach_images(rec, {"c": folder / "a.jpg"}).items["image_path"][:] == [None, None, str(folder / "a.jpg")]
    with pytest.raises(FileNotFoundError, match="Image of item 'a' not found"):
        attach_images(rec, {"a": tmp_path / "missing.jpg"})
    with pytest.raises(ValueError, match="expected columns 'item_id' and 'image_path'"):
        attach_images(rec, write(tmp_path / "x.tsv", ["id\tpath"]))


def test_llara_samples_map_ids_and_fix_candidates(tmp_path):
    rec = RecDataset.from_sequences("ml", {"u": [str(i) for i in range(1, 31)]})  # item ids "1".."30", rows 0..29
    path = write(
        tmp_path / "Test_data.jsonl",
        [
            json.dumps({"seq": [[4, 5], [9, 3], [29, 1]], "len_seq": 2, "next": [0, 4]}),  # MovieLens pairs
            json.dumps({"seq": [7, 8, 30], "len_seq": 2, "next": 1}),  # Steam-style ids, padding 30
        ],
    )
    samples = load_llara_samples(path, rec, num_candidates=6, seed=1)
    assert samples["user_id"][:] == ["Test_data-0", "Test_data-1"]
    assert samples["history"][:] == [[4, 9], [7, 8]] and samples["target"][:] == [0, 1]
    for row in samples:
        assert len(set(row["candidates"])) == 6 and row["candidates"].count(row["target"]) == 1
        assert not set(row["candidates"]) & set(row["history"])
    assert load_llara_samples(path, rec, num_candidates=6, seed=1)["candidates"][:] == samples["candidates"][:]
    write(path, [json.dumps({"seq": [40], "len_seq": 1, "next": 1})])
    with pytest.raises(DataFormatError, match=r"line 1: LLaRA id 40 \(item '41'\) is not in the catalog"):
        load_llara_samples(path, rec, num_candidates=6)
    write(path, [json.dumps({"seq": [1, 2], "len_seq": 3, "next": 1})])
    with pytest.raises(DataFormatError, match="len_seq 3 does not fit"):
        load_llara_samples(path, rec, num_candidates=6)


# ----- real data in ../shared/data (never copied into the repo) ---------------------------------------------------
@pytest.mark.slow
def test_beauty_statistics_match_sources():
    shared = require_shared_data("beauty/Beauty.txt", "beauty/items.jsonl")
    rec = load_s3rec(shared / "beauty" / "Beauty.txt", shared / "beauty" / "items.jsonl")
    stats = rec.statistics()
    # SOURCES.md §3: 22,363 users, 12,101 items, 198,502 interactions, 12,094 titles
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert stats["items_with_title"] == 12094
    assert rec.items[0]["title"] == "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce"
    assert rec.items[0]["item_id"] == "B004756YJA"  # its ASIN


@pytest.mark.slow
def test_movielens_100k_with_posters():
    shared = require_shared_data("llara_movielens", "movielens_posters/ml100k_to_ml1m_posters.tsv")
    folder = shared / "llara_movielens"
    rec = load_movielens(folder / "ml-100k_u.data", folder / "u.item", "ml-100k")
    assert (rec.num_users, rec.num_items, rec.statistics()["interactions"]) == (943, 1682, 100000)
    assert rec.items[0]["item_id"] == "1" and rec.items[0]["title"] == "Toy Story (1995)"
    rec = attach_images(rec, movielens_posters(shared / "movielens_posters" / "ml100k_to_ml1m_posters.tsv"))
    assert rec.statistics()["items_with_image"] == 1668  # SOURCES.md §9: 99.2 %
    test = load_llara_samples(folder / "Test_data.jsonl", rec)
    assert len(test) == 95 and sum(len(h) for h in test["history"][:]) == 950  # SOURCES.md §9


def test_load_dataset_by_name_folders_and_env(tmp_path, monkeypatch):
    rec = RecDataset.from_sequences("saved", {"u": ["a", "b"]})
    rec.save(tmp_path / "saved")
    assert load_dataset_by_name(str(tmp_path / "saved")).name == "saved"
    write(tmp_path / "Toy.txt", ["1 1 2 3"])
    assert load_dataset_by_name(str(tmp_path)).name == "Toy"
    write(tmp_path / "Other.txt", ["1 1 2"])
    with pytest.raises(ValueError, match="several sequence files"):
        load_dataset_by_name(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="Unknown dataset 'nope'"):
        load_dataset_by_name("nope")
    (tmp_path / "shared" / "sports").mkdir(parents=True)
    write(tmp_path / "shared" / "sports" / "Sports_and_Outdoors.txt", ["1 1 2", "2 2 3"])
    monkeypatch.setenv("SPEEDER_HF_DATA", str(tmp_path / "shared"))
    assert load_dataset_by_name("sports").num_users == 2
    with pytest.raises(FileNotFoundError, match="MovieLens-100K not found"):
        load_dataset_by_name("movielens")


@pytest.mark.slow
def test_embedded_beauty_is_the_shared_file():
    rec = load_dataset_by_name("beauty")
    assert (rec.num_users, rec.num_items, rec.statistics()["interactions"]) == (22363, 12101, 198502)
    assert rec.items[3]["title"].startswith("WAWO 15 Color")  # SOURCES.md §3 check (c)
    assert rec.items["item_id"][:2] == ["B004756YJA", "B004ZT0SSG"]  # ASINs, as the README's quickstart names them
