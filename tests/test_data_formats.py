"""Other projects' data folders: LLaRA's windows (both id shapes) and RecBole's atomic files, from hand-written
fixtures; the shared LLaRA files and recbole's shipped ml-100k when present; `--dataset` on such folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import require_package, require_shared_data, tiny_llm, tiny_tokenizer

from speeder_hf.catalog.item_catalog import ItemCatalog
from speeder_hf.data import (
    DataFormatError,
    load_dataset_by_name,
    load_llara,
    load_movielens,
    load_recbole,
    make_split,
    training_sequences,
)
from speeder_hf.data.named import shared_data_dir
from speeder_hf.data.recbole import recbole_inter_file
from speeder_hf_train.cli import main

NUM_ITEMS = 30  # the fixtures' catalog: LLaRA ids 0..29, so the padding id is 30
PAD = NUM_ITEMS
GENRES = "|".join(["0"] * 19)


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sequences_of(rec) -> dict[str, list[str]]:
    ids = rec.items["item_id"][:]
    return {u: [ids[i] for i in s] for u, s in zip(rec.sequences["user_id"][:], rec.sequences["items"][:])}


def window(history: list[int], target: int, pairs: bool = False, length: int = 10) -> str:
    """One LLaRA row: `history` right-padded to `length` ids, as LLaRA writes them (MovieLens: [id, rating])."""
    seq = history + [PAD] * (length - len(history))
    if pairs:
        return json.dumps(
            {"seq": [[i, 0 if i == PAD else 4] for i in seq], "len_seq": len(history), "next": [target, 5]}
        )
    return json.dumps({"seq": seq, "len_seq": len(history), "next": target})


def llara_folder(root: Path, pairs: bool = False) -> Path:
    """A LLaRA folder: Steam's shape (plain ids, `id2name.txt`) or MovieLens's (`[id, rating]` pairs, `u.item`)."""
    root.mkdir(parents=True, exist_ok=True)
    if pairs:
        write(root / "u.item", [f"{i + 1}|Movie {i} (1995)|01-Jan-1995||http://x|{GENRES}" for i in range(NUM_ITEMS)])
    else:
        write(root / "id2name.txt", [f"{i}::Game {i}" for i in range(NUM_ITEMS)])
    write(
        root / "train_data.jsonl",
        [
            window([0, 1, 2], 3, pairs),
            window([0, 1, 2, 3], 4, pairs),
            window([5, 6], 7, pairs),  # len_seq 2 < 3: LLaRA skips it
            window([8, 9, 10, 11, 12, 13, 14, 15, 16, 17], 18, pairs),
        ],
    )
    write(root / "Val_data.jsonl", [window([20, 21, 22], 23, pairs), window([1, 2, 3, 4], 5, pairs)])
    write(root / "Test_data.jsonl", [window([24, 25, 26, 27], 28, pairs), window([6, 7, 8], 29, pairs)])
    return root


# ----- LLaRA ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pairs", [False, True], ids=["plain ids", "id-rating pairs"])
def test_llara_folder_windows_split_and_padding(tmp_path, pairs):
    rec = load_llara(llara_folder(tmp_path / "toy", pairs))
    assert rec.name == "toy" and rec.num_items == NUM_ITEMS
    # Items as the title file names them: id2name ids, or u.item movie ids (LLaRA id + 1)
    assert rec.items["item_id"][:3] == (["1", "2", "3"] if pairs else ["0", "1", "2"])
    assert rec.items[0]["title"] == ("Movie 0 (1995)" if pairs else "Game 0")
    assert rec.sequences["user_id"][:] == [
        "train_data-0", "train_data-1", "train_data-3", "Val_data-0", "Val_data-1", "Test_data-0", "Test_data-1",
    ]  # fmt: skip
    assert rec.sequences["split"][:] == ["train"] * 3 + ["validation"] * 2 + ["test"] * 2
    assert rec.sequences["items"][2] == list(range(8, 19))  # a full window: no padding to skip
    assert rec.sequences["items"][0] == [0, 1, 2, 3]  # padding left out

    split = make_split(rec, num_candidates=5, seed=1)
    # One sample per window, in the file's split: training windows are not cut into prefixes
    assert split["train"].to_dict() == {
        "user_id": ["train_data-0", "train_data-1", "train_data-3"],
        "history": [[0, 1, 2], [0, 1, 2, 3], list(range(8, 18))],
        "target": [3, 4, 18],
    }
    assert split["validation"]["history"][:] == [[20, 21, 22], [1, 2, 3, 4]]
    assert split["test"]["target"][:] == [28, 29]
    assert json.loads(split["test"].info.description)["strategy"] == "given"
    for name in ("validation", "test"):
        for row in split[name]:
            # LLaRA's rule: the target once and negatives outside the window's history and target
            candidates = row["candidates"]
            assert len(set(candidates)) == 5 and candidates.count(row["target"]) == 1
            assert not set(candidates) & set(row["history"])
    # Fixed by the seed: the same seed gives the same candidates, another seed others
    assert make_split(rec, num_candidates=5, seed=1)["test"]["candidates"][:] == split["test"]["candidates"][:]
    assert make_split(rec, num_candidates=5, seed=2)["test"]["candidates"][:] != split["test"]["candidates"][:]
    # SASRec trains on the training windows only; held out, on their histories
    assert training_sequences(rec) == {
        "train_data-0": [0, 1, 2, 3],
        "train_data-1": [0, 1, 2, 3, 4],
        "train_data-3": list(range(8, 19)),
    }
    assert training_sequences(rec, holdout=1)["train_data-0"] == [0, 1, 2]


def test_llara_min_history_and_files_present(tmp_path, caplog):
    folder = llara_folder(tmp_path / "toy")
    assert "train_data-2" in load_llara(folder, min_history=2).sequences["user_id"][:]
    (folder / "train_data.jsonl").unlink()  # the shared folders have no training file: evaluation only
    (folder / "train_data.df").write_bytes(b"\x80\x04not read")
    rec = load_llara(folder)
    assert set(rec.sequences["split"][:]) == {"validation", "test"} and not len(make_split(rec)["train"])
    assert training_sequences(rec) == {}
    assert "train_data.df is not read (a pickle); convert it to train_data.jsonl" in caplog.text


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"seq": [1, 2, 3], "next": 4}), "missing field 'len_seq'"),
        (json.dumps({"seq": [1, 2, 3, PAD], "len_seq": 4, "next": 4}), "len_seq 4 does not match the 3 ids"),
        (json.dumps({"seq": [1, 2, 3], "len_seq": "3", "next": 4}), "len_seq '3' is not an integer"),
        (json.dumps({"seq": [1, "b", 3], "len_seq": 3, "next": 4}), "'b' is not an item id"),
        (json.dumps({"seq": [1, 2, 3], "len_seq": 3, "next": PAD}), f"next is the padding id {PAD}"),
        (json.dumps({"seq": [1, 2, 31], "len_seq": 3, "next": 4}), "LLaRA id 31 is not in the catalog"),
        (json.dumps({"seq": 7, "len_seq": 3, "next": 4}), "seq must be a list"),
    ],
)
def test_llara_bad_window_names_file_and_line(tmp_path, line, problem):
    folder = llara_folder(tmp_path / "toy")
    path = write(folder / "Val_data.jsonl", [window([1, 2, 3], 4), line])
    with pytest.raises(DataFormatError, match=problem) as error:
        load_llara(folder)
    assert (error.value.path, error.value.line_number) == (str(path), 2)


def test_llara_titles_and_pickles(tmp_path):
    folder = llara_folder(tmp_path / "toy")
    write(folder / "id2name.txt", ["0::Game 0", "1 Game 1"])
    with pytest.raises(DataFormatError, match=r"id2name\.txt, line 2: expected 'id::name'"):
        load_llara(folder)
    write(folder / "id2name.txt", ["0::Game 0", "0::Again"])
    with pytest.raises(DataFormatError, match="line 2: id 0 already had line 1"):
        load_llara(folder)
    (folder / "id2name.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no title file \(id2name\.txt or u\.item\)"):
        load_llara(folder)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "Test_data.df").write_bytes(b"\x80\x04not read")
    with pytest.raises(FileNotFoundError, match=r"pickles \['Test_data\.df'\] are never loaded"):
        load_dataset_by_name(str(pickled))


# ----- RecBole --------------------------------------------------------------------------------------------------
INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"


def recbole_folder(root: Path, items: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write(
        root / f"{root.name}.inter",
        [
            INTER_HEADER,
            "u1\ti3\t4\t300",
            "u1\ti1\t5\t100",
            "u2\ti2\t3\t100.5",
            "u1\ti2\t2\t200",
            "u2\ti1\t1\t100.25",  # before i2 by a quarter of a second
            "u2\ti3\t4\t400",
            "u2\ti4\t4\t400",  # the same second as i3: file order
        ],
    )
    if items:
        write(
            root / f"{root.name}.item",
            [
                "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float",
                "i1\tToy Story\t1995\tAnimation Comedy\t3.5",
                "i2\tHeat\t1995\t\t2",
                "i3\t\t1990\tDrama\t1",
                "i9\tNever seen\t2000\tDrama\t1",
            ],
        )
    return root


def test_recbole_orders_by_time_and_reads_item_text(tmp_path):
    rec = load_recbole(recbole_folder(tmp_path / "toy"))
    ids = rec.items["item_id"][:]
    assert sequences_of(rec) == {"u1": ["i1", "i2", "i3"], "u2": ["i1", "i2", "i3", "i4"]}
    assert rec.sequences["timestamps"][:] == [[100, 200, 300], [100, 100, 400, 400]]
    # .item order, only items interacted with, then the items without metadata
    assert ids == ["i1", "i2", "i3", "i4"] and rec.name == "toy"
    assert rec.items[0]["title"] == "Toy Story"
    assert rec.items[0]["text"] == "Toy Story. Release year: 1995. Class: Animation Comedy."  # float fields: not text
    assert rec.items[1]["text"] == "Heat. Release year: 1995."
    assert rec.items[2]["title"] is None and rec.items[2]["text"] == "Release year: 1990. Class: Drama."
    assert rec.items[3]["title"] is None
    # The same files through --dataset: the folder, or the .inter file itself
    assert load_dataset_by_name(str(tmp_path / "toy")).items["item_id"][:] == ids
    assert load_dataset_by_name(str(tmp_path / "toy" / "toy.inter")).num_users == 2


def test_recbole_options_and_file_choice(tmp_path):
    folder = recbole_folder(tmp_path / "toy", items=False)
    rec = load_recbole(folder, min_rating=3)
    assert rec.statistics()["interactions"] == 5 and rec.items["title"][:] == [None] * 4
    write(folder / "toy.inter", ["user_id:token\titem_id:token", "u1\tb", "u1\ta"])  # no timestamp: file order
    rec = load_recbole(folder / "toy.inter")
    assert rec.items["item_id"][:] == ["b", "a"] and not rec.has_timestamps
    write(folder / "toy.item", ["item_id:token\ttitle:token_seq\tcategories:token_seq", "a\tSoap\tBath Body"])
    rec = load_recbole(folder)
    assert rec.items["item_id"][:] == ["a", "b"] and rec.items[0]["text"] == "Soap. Categories: Bath Body."
    write(folder / "other.inter", [INTER_HEADER])
    assert recbole_inter_file(folder) == folder / "toy.inter"  # the file named after its folder wins
    (folder / "toy.inter").rename(folder / "third.inter")
    with pytest.raises(ValueError, match="several interaction files"):
        recbole_inter_file(folder)


@pytest.mark.parametrize(
    ("suffix", "lines", "number", "problem"),
    [
        (".inter", ["user_id:token\trating:float", "u1\t3"], 1, "the header lacks the field 'item_id'"),
        (".inter", ["user_id:token\titem_id:text", "u1\ti1"], 1, "header field 'item_id:text' is not 'name:type'"),
        (".inter", [INTER_HEADER, "u1\ti1\t3\t10", "u1\ti2\t3"], 3, "expected 4 tab-separated fields"),
        (".inter", [INTER_HEADER, "u1 i1 3 10"], 2, "expected 4 tab-separated fields as in the header, got 1"),
        (".inter", [INTER_HEADER, "u1\ti1\t3\tyesterday"], 2, "timestamp 'yesterday' is not a number"),
        (".inter", [INTER_HEADER, "\ti1\t3\t10"], 2, "empty user_id"),
        (".item", ["item_id:token\ttitle:token_seq", "i1\tA", "", "i1\tB"], 4, "item 'i1' already had line 2"),
        (".item", ["item_id:token\ttitle:token_seq", "i1\tA\textra"], 2, "expected 2 tab-separated fields"),
    ],
)
def test_recbole_bad_line_names_file_and_line(tmp_path, suffix, lines, number, problem):
    folder = recbole_folder(tmp_path / "toy")
    path = write(folder / f"toy{suffix}", lines)
    with pytest.raises(DataFormatError, match=problem) as error:
        load_recbole(folder)
    assert (error.value.path, error.value.line_number) == (str(path), number)


# ----- real files: recbole's shipped ml-100k, the shared LLaRA validation and test files --------------------------
def recbole_ml_100k() -> Path:
    require_package("recbole", "pip install --no-deps recbole==1.2.1, as `make install` does")
    import importlib.util

    (package,) = importlib.util.find_spec("recbole").submodule_search_locations
    return Path(package) / "dataset_example" / "ml-100k"


@pytest.mark.slow
def test_recbole_shipped_ml_100k():
    rec = load_recbole(recbole_ml_100k())
    stats = rec.statistics()
    assert (stats["users"], stats["items"], stats["interactions"], stats["min_length"]) == (943, 1682, 100000, 20)
    assert rec.items[0]["item_id"] == "1" and rec.items[0]["title"] == "Toy Story"
    assert rec.items[0]["text"] == "Toy Story. Release year: 1995. Class: Animation Children's Comedy."
    assert rec.items[rec.item_index["543"]]["title"] == "Misérables, Les"  # UTF-8
    shared = shared_data_dir() / "llara_movielens" / "ml-100k_u.data"
    if shared.is_file():  # GroupLens's own u.data, read by the MovieLens loader, gives the same sequences
        assert sequences_of(rec) == sequences_of(load_movielens(shared))


# Hand-written training windows for the shared folders, which lack LLaRA's train_data.df (SOURCES.md, section 6)
SHARED_LLARA = {
    "llara_movielens": ("u.item", 1682, True, (94, 95), "Get Shorty (1995)"),  # line 1: next [3, 4], movie 4
    "llara_steam": ("id2name.txt", 3581, False, (1184, 1186), "PRO EVOLUTION SOCCER 2018"),  # line 1: next 1417
}


def shared_llara_folder(root: Path, name: str) -> Path:
    """The shared validation, test and title files of `name` beside hand-written training windows."""
    titles, num_items, pairs, _, _ = SHARED_LLARA[name]
    shared = require_shared_data(*(f"{name}/{f}" for f in ("Val_data.jsonl", "Test_data.jsonl", titles)))
    folder = root / name
    folder.mkdir()
    for file in ("Val_data.jsonl", "Test_data.jsonl", titles):
        (folder / file).symlink_to(shared / name / file)
    windows = [
        {"seq": [7 * k + j for j in range(n)] + [num_items] * (10 - n), "len_seq": n, "next": 7 * k + 100}
        for k, n in enumerate([3, 5, 10, 10, 4, 6])
    ]
    if pairs:
        windows = [
            {**w, "seq": [[i, 0 if i == num_items else 4] for i in w["seq"]], "next": [w["next"], 5]} for w in windows
        ]
    write(folder / "train_data.jsonl", [json.dumps(w) for w in windows])
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SHARED_LLARA))
def test_shared_llara_validation_and_test_files(tmp_path, name):
    folder = shared_llara_folder(tmp_path, name)
    _, num_items, pairs, sizes, first_target = SHARED_LLARA[name]
    rec = load_dataset_by_name(str(folder))
    assert rec.num_items == num_items and rec.statistics()["items_with_title"] == num_items
    split = make_split(rec, num_candidates=20, seed=0)
    assert (len(split["train"]), len(split["validation"]), len(split["test"])) == (6, *sizes)
    if pairs:  # SOURCES.md section 9: the test windows hold 950 history ids, all of len_seq 10
        assert sum(len(h) for h in split["test"]["history"][:]) == 950
        if (shared_data_dir() / name / "ml-100k_u.data").is_file():
            # The catalog of `--dataset movielens`, so a model trained there evaluates on LLaRA's test windows
            assert rec.items["item_id"][:] == load_dataset_by_name("movielens").items["item_id"][:]
    assert rec.items[split["test"][0]["target"]]["title"] == first_target
    for row in split["test"]:
        assert len(set(row["candidates"])) == 20 and row["target"] in row["candidates"]
        assert not set(row["candidates"]) & set(row["history"])
    assert make_split(rec, num_candidates=20, seed=0)["test"]["candidates"][:] == split["test"]["candidates"][:]


# ----- the command line on such folders ----------------------------------------------------------------------------
TINY_RUN = ["--modalities", "id", "--num_candidates", "5", "--max_history_len", "8", "--sasrec_epochs", "1"]
TINY_TRAIN = ["--stage_steps", "1", "--final_stage_steps", "2", "--batch_size", "2", "--max_eval_samples", "2"]
TINY_TRAIN += ["--eval_batch_size", "2", "--num_examples", "1"]


@pytest.fixture(scope="module")
def tiny_llm_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("llm")
    tokenizer = tiny_tokenizer()
    tiny_llm(vocab_size=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(data: Path, out: Path, llm: Path, *extra: str) -> dict:
    assert main(["train", "--dataset", str(data), "--output_dir", str(out), "--llm", str(llm)] + TINY_RUN + TINY_TRAIN
                + ["--cache_dir", str(out.parent / "cache"), *extra]) == 0  # fmt: skip
    return json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize("pairs", [False, True], ids=["plain ids", "id-rating pairs"])
def test_train_and_evaluate_on_a_llara_folder(tmp_path, tiny_llm_folder, pairs, capsys):
    data = llara_folder(tmp_path / "toy", pairs)
    results = _train(data, tmp_path / "run", tiny_llm_folder)
    assert results["dataset"] == "toy" and results["metrics"]["num_samples"] == 2
    assert results["split_strategy"] == "given"  # the folder's own test windows, as the card then says
    # Trained on the three training windows' targets (held out from the SASRec of the id features)
    assert results["priors"]["calibration_users"] == 2  # the validation file's windows
    out = tmp_path / "metrics.json"
    main(["evaluate", "--model-dir", str(tmp_path / "run"), "--dataset", str(data), "--out", str(out)])
    metrics = json.loads(out.read_text())["metrics"]
    numbers = {k: v for k, v in results["metrics"].items() if isinstance(v, int | float)}
    assert {k: metrics[k] for k in numbers} == pytest.approx(numbers)  # the same test windows and candidates
    capsys.readouterr()
    (data / "train_data.jsonl").unlink()
    assert main(["train", "--dataset", str(data), "--output_dir", str(tmp_path / "again"), "--llm", "x"]) == 2
    assert "needs train_data.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_train_on_the_shared_steam_files(tmp_path, tiny_llm_folder):
    results = _train(shared_llara_folder(tmp_path, "llara_steam"), tmp_path / "run", tiny_llm_folder)
    assert results["metrics"]["num_samples"] == 2 and results["priors"]["calibration_users"] == 1184


def test_build_catalog_on_a_recbole_folder(tmp_path, capsys):
    data = recbole_folder(tmp_path / "toy")
    events = [f"u{u}\ti{(3 * u + k) % 12}\t4\t{10 * k}" for u in range(6) for k in range(5)]
    write(data / "toy.inter", [INTER_HEADER, *events])
    main(["build-catalog", "--dataset", str(data), "--out", str(tmp_path / "catalog"), *TINY_RUN,
          "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    assert "Saved the catalog of 12 items with modalities ['id']" in capsys.readouterr().out
    assert ItemCatalog.load(tmp_path / "catalog").titles[:2] == ["Toy Story", "Heat"]  # from toy.item
    bad = write(data / "toy.inter", [INTER_HEADER, "u1\ti1\t3\t10", "u1\ti2\t3\tlater"])
    assert main(["build-catalog", "--dataset", str(data), "--out", str(tmp_path / "other")]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"speeder-hf build-catalog: error: {bad}, line 3: timestamp 'later' is not a number."
    ]
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_build_catalog_on_recbole_ml_100k(tmp_path, capsys):
    data = tmp_path / "ml-100k"
    shutil.copytree(recbole_ml_100k(), data)
    main(["build-catalog", "--dataset", str(data), "--out", str(tmp_path / "catalog"), *TINY_RUN,
          "--cache_dir", str(tmp_path / "cache")])  # fmt: skip
    assert "Saved the catalog of 1682 items" in capsys.readouterr().out
