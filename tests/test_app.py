"""The web demo (`speeder_hf_train.app`): its logic on a tiny saved model, its page in a real headless browser, and the
`speeder-hf app` command."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import socket
import time
import tomllib
from pathlib import Path

import pytest
from conftest import missing, require_module, tiny_speeder
from PIL import Image
from test_pipeline import NUM_ITEMS, tiny_catalog, tiny_sasrec

import speeder_hf_train.app
from speeder_hf.serving.bundle import save_pretrained_bundle
from speeder_hf.serving.recommend import Recommender
from speeder_hf_train.app import RecommenderDemo, history_choices, load_examples
from speeder_hf_train.cli import main

EXAMPLES = [
    {"user_id": "u0", "history": ["I1", "I4", "I5"], "target": "I8"},
    {"user_id": "u1", "history": ["I10", "I11"], "target": "I12"},
]
WITH_IMAGE = set(range(0, NUM_ITEMS, 2))  # even rows have an image; odd rows show that images are optional
GRADIO = 'pip install "speeder_hf[app]"'
CHROME = "apt-get install chromium chromium-driver (CI installs them)"


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    """A tiny model saved with its catalog, SASRec and example users; beside it, the full catalog folder (as
    `build-catalog --out` writes it), with images on the even rows."""
    root = tmp_path_factory.mktemp("app")
    model, tokenizer = tiny_speeder(num_items=NUM_ITEMS)
    catalog = tiny_catalog()
    for row in WITH_IMAGE:
        path = root / f"item{row}.png"
        Image.new("RGB", (80, 60), (8 * row, 120, 200)).save(path)
        catalog.image_paths[row] = str(path)
    catalog.save(root / "catalog")
    directory = root / "model"
    save_pretrained_bundle(model, directory, tokenizer, catalog, sasrec=tiny_sasrec())
    (directory / "eval_results.json").write_text(json.dumps({"examples": EXAMPLES}))
    return directory


@pytest.fixture(scope="module")
def demo(saved_model) -> RecommenderDemo:
    return RecommenderDemo.from_pretrained(saved_model, catalog=saved_model.parent / "catalog")


def table_rows(table: str) -> list[tuple[str, list[str]]]:
    """`(item id, cell texts)` per body row of a table the demo renders."""
    rows = re.findall(r'<tr data-item-id="([^"]+)"[^>]*>(.*?)</tr>', table)
    return [
        (item_id, [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td>(.*?)</td>", cells)]) for item_id, cells in rows
    ]


def test_every_item_has_one_label_that_names_it():
    choices = history_choices(["lipstick", "Soap", "soap ", None], ["a", "b", "c", "d"])
    assert choices == [("lipstick", "a"), ("Soap [id b]", "b"), ("soap  [id c]", "c"), ("item d", "d")]


def test_page_tables_are_the_recommenders_ranking_and_the_retrievers_order(demo, saved_model):
    history = ["I1", "title 4", "I5"]
    message, reranked, retriever = demo.recommend(history)
    recommender = Recommender.from_pretrained(str(saved_model))
    (expected,) = recommender.recommend([history])
    shown = table_rows(reranked)
    assert [item_id for item_id, _ in shown] == [r["item_id"] for r in expected]
    assert [cells[4] for _, cells in shown] == [f"{r['score']:.4f}" for r in expected]
    labels = {item_id: label for label, item_id in demo.choices}  # titles, with the id where one is shared
    assert [cells[2] for _, cells in shown] == [labels[r["item_id"]] for r in expected]
    assert all(cells[2].startswith(r["title"]) for (_, cells), r in zip(shown, expected))

    # The retriever's table is its own order of the same candidates; both tables give each item's other rank.
    retrieved = [recommender.catalog.item_ids[row] for row in recommender.prepare(history).candidates]
    assert [item_id for item_id, _ in table_rows(retriever)] == retrieved
    reranked_rank = {item_id: rank for rank, (item_id, _) in enumerate(shown, 1)}
    assert [int(cells[3]) for item_id, cells in table_rows(retriever)] == [reranked_rank[i] for i in retrieved]
    assert [int(cells[5].split()[0]) for _, cells in shown] == [retrieved.index(i) + 1 for i, _ in shown]
    assert "retrieved by SASRec" in message and "history of 3 items" in message

    # Images inline (data URIs) exactly where the catalog has one.
    images = dict(re.findall(r'<tr data-item-id="([^"]+)".*?<td>\d+</td><td>(.*?)</td>', reranked))
    assert {i for i, cell in images.items() if cell.startswith('<img src="data:image/jpeg;base64,')} == {
        i for i in images if int(i[1:]) in WITH_IMAGE
    }


@pytest.mark.parametrize(
    "history, match",
    [
        ([], "Empty history"),
        (None, "Empty history"),
        (["I1", "no such title"], "Unknown item 'no such title': neither an item id nor a title"),
        (["title 6"], "Title 'title 6' is ambiguous"),
    ],
)
def test_bad_input_is_a_message_in_the_page(demo, history, match):
    message, reranked, retriever = demo.recommend(history)
    assert message.startswith("**Error:** ") and match.replace("'", "&#x27;") in message
    assert reranked == retriever == ""


def test_images_come_from_the_catalog_folder_of_the_same_items(saved_model, tmp_path):
    without = RecommenderDemo.from_pretrained(saved_model)  # a saved model keeps no image paths
    assert without.image_paths == [None] * NUM_ITEMS and "<img" not in without.recommend(["I1"])[1]
    other = tiny_catalog(NUM_ITEMS + 1)
    other.save(tmp_path)
    with pytest.raises(ValueError, match="has other items than the model"):
        RecommenderDemo.from_pretrained(saved_model, catalog=tmp_path)
    web = RecommenderDemo(without.recommender, image_paths=["https://example.org/a.jpg"] * NUM_ITEMS)
    assert '<img src="https://example.org/a.jpg"' in web.recommend(["I1"])[1]


def test_example_users_come_from_the_results_saved_with_the_model(demo, saved_model, tmp_path):
    assert load_examples(saved_model) == demo.examples == EXAMPLES
    assert load_examples(tmp_path) == []


def test_the_page_has_the_searchable_picker_and_the_outputs(demo):
    require_module("gradio", GRADIO)
    page = demo.build()
    components = {c["props"].get("elem_id"): c for c in page.config["components"] if c["props"].get("elem_id")}
    assert {"history", "recommend", "message", "reranked", "retriever"} <= set(components)
    picker = components["history"]["props"]
    assert picker["multiselect"] and picker["filterable"]
    assert [tuple(c) for c in picker["choices"]] == demo.choices
    dataset = next(c["props"] for c in page.config["components"] if c["type"] == "dataset")
    assert dataset["sample_labels"] == ["User u0", "User u1"]


def test_the_same_file_runs_as_a_space_app(saved_model, monkeypatch):
    # A Space runs app.py as a top-level script, where relative imports would fail.
    namespace = runpy.run_path(speeder_hf_train.app.__file__, run_name="space_app")
    assert namespace["RecommenderDemo"].__name__ == "RecommenderDemo"
    served = []
    monkeypatch.setattr(speeder_hf_train.app, "launch", lambda *args: served.append(args))
    monkeypatch.setenv(speeder_hf_train.app.MODEL_ENV, str(saved_model))
    speeder_hf_train.app.main([])
    assert served == [(str(saved_model), None)]
    monkeypatch.delenv(speeder_hf_train.app.MODEL_ENV)
    with pytest.raises(SystemExit, match="SPEEDER_MODEL"):
        speeder_hf_train.app.main([])


def test_app_command(saved_model, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(speeder_hf_train.app, "launch", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["app", "--model-dir", str(saved_model), "--port", "7870"]) == 0
    assert calls == [((str(saved_model), None), {"host": "127.0.0.1", "port": 7870, "share": False})]

    def no_gradio(*args, **kwargs):
        raise ImportError(speeder_hf_train.app.INSTALL_HINT)

    monkeypatch.setattr(speeder_hf_train.app, "launch", no_gradio)
    with pytest.raises(SystemExit) as exit_info:
        main(["app", "--model-dir", str(saved_model)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"speeder-hf app: error: {speeder_hf_train.app.INSTALL_HINT}"


# ----- in a real browser ------------------------------------------------------------------------------------------
def require_chromedriver() -> str:
    """The path of `chromedriver`, else `missing` (a skip here, a failure under CI, whose .ci/run installs it)."""
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        missing(f"no chromedriver on PATH, so no browser to drive: {CHROME}")
    return chromedriver


def test_no_browser_skips_saying_so_and_fails_in_ci(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no chromedriver on PATH.*apt-get install chromium"):
        require_chromedriver()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no chromedriver on PATH.*CI must run this test"):
        require_chromedriver()


def test_ci_installs_the_browser_and_the_extras_pin_the_tested_versions():
    root = Path(__file__).resolve().parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert project["app"] == ["gradio>=6.31,<7"]
    assert {"gradio>=6.31,<7", "selenium>=4.20"} <= set(project["dev"]) and "selenium>=4.20" in project["test"]
    pins = (root / "constraints-ci.txt").read_text().split()
    assert {"gradio==6.31.0", "selenium==4.51.0"} <= set(pins)
    ci = (root / ".ci" / "run").read_text()
    assert "apt-get install -y -qq chromium chromium-driver" in ci
    assert ci.index("chromium-driver") < ci.index("make test")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Gradio 6.31's queue still passes pandas options that pandas 3 deprecates: noise from the server, not this code.
@pytest.mark.filterwarnings(
    "ignore:'future.no_silent_downcasting' is deprecated", "ignore:The copy keyword is deprecated"
)
def test_in_a_headless_browser(demo, saved_model, tmp_path_factory, capsys):
    require_module("gradio", GRADIO)
    webdriver = require_module("selenium.webdriver", "pip install selenium; `make install` installs it")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    chromedriver = require_chromedriver()

    port = _free_port()
    page = demo.build()
    page.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        start = time.perf_counter()
        wait = WebDriverWait(driver, 60)
        driver.get(f"http://127.0.0.1:{port}")
        picker = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#history input"))
        button = driver.find_element(By.ID, "recommend")

        def message() -> str:
            return driver.find_element(By.ID, "message").text

        button.click()  # nothing picked yet
        wait.until(lambda d: message().startswith("Error:"))
        assert "Empty history" in message()

        # Search as you type: part of a title narrows the list, Enter picks the first match.
        picker.click()
        picker.send_keys("title 2")
        options_shown = wait.until(
            lambda d: [o.text for o in d.find_elements(By.CSS_SELECTOR, "#history ul li")][:12] or None
        )
        assert options_shown == ["title 2", *(f"title {i}" for i in range(20, 30))]
        picker.send_keys(Keys.ENTER)
        for title in ("title 4", "title 15"):
            picker.send_keys(title, Keys.ENTER)
        picker.send_keys(Keys.ESCAPE)
        chips = driver.find_element(By.CSS_SELECTOR, "#history .wrap-inner").text.split("\n")
        assert chips == ["title 2", "title 4", "title 15"]
        button.click()
        rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#reranked tbody tr"))
        seconds = time.perf_counter() - start

        (expected,) = Recommender.from_pretrained(str(saved_model)).recommend([["I2", "I4", "I15"]])
        assert [row.get_attribute("data-item-id") for row in rows] == [r["item_id"] for r in expected]
        assert [float(row.get_attribute("data-score")) for row in rows] == pytest.approx(
            [r["score"] for r in expected], abs=1e-6
        )
        assert [row.find_elements(By.TAG_NAME, "td")[4].text for row in rows] == [f"{r['score']:.4f}" for r in expected]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#retriever tbody tr")) == len(expected)
        assert any(row.find_elements(By.TAG_NAME, "img") for row in rows)  # even rows have images
        assert "retrieved by SASRec" in message()

        screenshot = tmp_path_factory.mktemp("app-screenshot") / "speeder-app.png"
        driver.save_screenshot(str(screenshot))
        with capsys.disabled():
            print(f"\nScreenshot of the web demo: {screenshot} (history to recommendations in {seconds:.1f} s)")

        picker.click()
        picker.send_keys("no such title", Keys.ENTER, Keys.ESCAPE)  # no option matches: kept as typed
        button.click()
        wait.until(lambda d: message().startswith("Error:"))
        assert "Unknown item 'no such title'" in message()
        assert not driver.find_elements(By.CSS_SELECTOR, "#reranked tbody tr")

        # An example user (the model card's) fills the picker with that history, by title.
        driver.find_element(By.XPATH, "//button[normalize-space()='User u0']").click()
        labels = dict((item_id, label) for label, item_id in demo.choices)
        wanted = [labels[item_id] for item_id in EXAMPLES[0]["history"]]
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#history .wrap-inner").text.split("\n") == wanted)
    finally:
        driver.quit()
        page.close()
