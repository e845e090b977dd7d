"""The Visual Turing Test kit: made from a synthesis of the bundled CT and LiTS's real lesions, scored with readers
whose answers are known, and driven in a real browser (Chromium from the system's package manager)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from difftumor.cli.main import main as cli
from difftumor.evaluation.reader_study import (
    CALIPER_FRACTION,
    CALIPER_MM,
    fleiss_kappa,
    score,
    wilson_interval,
)
from tests.helpers.volumes import LITS_CT, LITS_LABEL, PATIENT_A_CT, PATIENT_A_ORGANS

#: End to end and minutes long: the slow tier (`python -m pytest -m slow`, run by CI too).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A kit of size-matched real (LiTS 117, upper half) and synthetic (handcrafted, patient A) early lesions."""
    root = tmp_path_factory.mktemp("study")
    for sub, source in (("images", LITS_CT), ("labels", LITS_LABEL)):
        (root / "real" / sub).mkdir(parents=True)
        (root / "real" / sub / "lits117.nii.gz").symlink_to(source)
    code = cli(["synthesize", str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", "5",
                "--synthesizer", "handcrafted", "--size", "early", "--count", "10", "--seed", "1",
                "--out", str(root / "run1")])  # fmt: skip
    assert code == 0
    arguments = ["--synthetic", str(root / "run1"), "--real", str(root / "real"), "--truth-labels", "lits"]
    code = cli(["reader-study", "make", *arguments, "--count", "6", "--fov-mm", "32", "--machine-reader",
                "--out", str(root / "kit"), "--key", str(root / "key.json")])  # fmt: skip
    assert code == 0
    return root, arguments


def test_the_kit_is_blinded_size_matched_and_its_key_kept_apart(study, capsys):
    root, arguments = study
    key = json.loads((root / "key.json").read_text())
    page = (root / "kit" / "index.html").read_text()
    assert sorted(p.name for p in (root / "kit").iterdir() if not p.name.startswith(".")) == ["index.html"]
    assert len(key["items"]) == 12 and key["kit_id"] in page
    truths = [entry["truth"] for entry in key["items"].values()]
    assert truths.count("real") == truths.count("synthetic") == 6 and truths != sorted(truths)  # shuffled
    # nothing in the page says where an item came from
    for entry in key["items"].values():
        assert entry["case"] not in page and Path(entry["ct"]).name not in page
        assert entry["truth"] == "real" or entry["group"] not in page
    # matched one to one in size: the two groups' sorted diameters pair up within the caliper
    sizes = {
        t: sorted(e["diameter_mm"] for e in key["items"].values() if e["truth"] == t) for t in ("real", "synthetic")
    }
    assert all(abs(a - b) <= max(CALIPER_MM, CALIPER_FRACTION * b) for a, b in zip(sizes["real"], sizes["synthetic"]))
    assert key["matching"]["ks_p"] > 0.5
    # patient A (3 mm, non-contrast) against LiTS (1.5 mm, enhanced): the scans give the answer away, and it is said
    assert any("voxels" in w for w in key["warnings"]) and any("contrast phases" in w for w in key["warnings"])

    code = cli(["reader-study", "make", *arguments, "--out", str(root / "k2"), "--key", str(root / "k2" / "key.json")])
    err = capsys.readouterr().err
    assert code == 2 and "inside the kit folder" in err and not (root / "k2").exists()
    code = cli(["reader-study", "make", *arguments, "--count", "40", "--out", str(root / "k3"),
                "--key", str(root / "k3.json")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "have a real lesion of matching size" in err and err.strip().count("\n") == 0
    assert not (root / "k3").exists() and not (root / "k3.json").exists()


def test_known_answer_readers_score_as_they_must(study, capsys):
    root, _ = study
    paths = {}
    for reader in ("always-real", "random", "key"):
        paths[reader] = root / f"answers-{reader}.json"
        code = cli(["reader-study", "simulate", "--key", str(root / "key.json"), "--reader", reader, "--seed", "4",
                    "--out", str(paths[reader])])  # fmt: skip
        assert code == 0
    result = score(root / "key.json", list(paths.values()), machine_reader=True)
    rows = {row["reader"].split(" ")[0]: row for row in result["readers"]}
    assert rows["always-real"]["sensitivity"]["value"] == 1 and rows["always-real"]["specificity"]["value"] == 0
    assert rows["always-real"]["auc"] == 0.5
    assert rows["key"]["accuracy"]["value"] == 1 and rows["key"]["auc"] == 1
    low, high = rows["random"]["accuracy"]["ci95"]
    assert low <= 0.5 <= high  # a coin is not told from chance
    assert "machine" in rows and rows["machine"]["answered"] == 12
    assert math.isfinite(result["fleiss_kappa"])
    code = cli(["reader-study", "score", "--key", str(root / "key.json"), *sum((["--answers", str(p)] for p in
                paths.values()), []), "--out", str(root / "scores.json")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "| sensitivity (%) | 100.0 [" in out and "paper R1" in out and "Fleiss" in out
    # answers of another kit are refused
    other = json.loads(paths["key"].read_text()) | {"kit_id": "0" * 16}
    (root / "other.json").write_text(json.dumps(other))
    code = cli(["reader-study", "score", "--key", str(root / "key.json"), "--answers", str(root / "other.json")])
    assert code == 2 and "score each kit with its own key" in capsys.readouterr().err
    # a hand-edited file: one line, no traceback
    edited = json.loads(paths["key"].read_text())
    edited["answers"] = {item: "real" for item in edited["answers"]}
    (root / "edited.json").write_text(json.dumps(edited))
    code = cli(["reader-study", "score", "--key", str(root / "key.json"), "--answers", str(root / "edited.json")])
    err = capsys.readouterr().err
    assert code == 2 and "confidence 1-5" in err and err.strip().count("\n") == 0
    # a kit must hold one organ's lesions: the anatomy around a kidney tumour gives it away among liver lesions
    (root / "runs").mkdir()
    code = cli(["synthesize", str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", "2",
                "--organ", "kidney", "--synthesizer", "handcrafted", "--size", "tiny", "--count", "2",
                "--out", str(root / "runs" / "kidney")])  # fmt: skip
    assert code == 0
    code = cli(["reader-study", "make", "--synthetic", str(root / "runs"), "--synthetic", str(root / "run1"),
                "--real", str(root / "real"),
                "--truth-labels", "lits", "--out", str(root / "k4"), "--key", str(root / "k4.json")])  # fmt: skip
    assert code == 2 and "kidney and liver" in capsys.readouterr().err and not (root / "k4").exists()


def test_specificity_is_also_reported_per_synthesizer(tmp_path):
    """A kit holding two synthesizers' tumours: which of them pass for real, each with its own interval."""
    from difftumor.evaluation.reader_study import score_markdown

    items = {f"case-{i:03d}": {"truth": "real", "group": "real"} for i in range(1, 5)}
    items |= {f"case-{i:03d}": {"truth": "synthetic", "group": "diffusion (relative)"} for i in range(5, 9)}
    items |= {f"case-{i:03d}": {"truth": "synthetic", "group": "handcrafted (relative)"} for i in range(9, 13)}
    (tmp_path / "key.json").write_text(json.dumps({"kit_id": "k" * 16, "items": items}))
    # a reader fooled by every diffusion tumour and by none of the handcrafted ones
    answers = {item: {"answer": "real" if entry["group"] != "handcrafted (relative)" else "synthetic",
                      "confidence": 4} for item, entry in items.items()}  # fmt: skip
    (tmp_path / "a.json").write_text(json.dumps({"kit_id": "k" * 16, "reader": "R1", "answers": answers}))
    result = score(tmp_path / "key.json", [tmp_path / "a.json"])
    groups = result["readers"][0]["specificity_by_group"]
    assert groups["diffusion (relative)"]["value"] == 0 and groups["handcrafted (relative)"]["value"] == 1
    assert result["readers"][0]["specificity"]["value"] == 0.5
    table = score_markdown(result)
    assert "| specificity, diffusion (relative) (%) | 0.0 [" in table and "handcrafted (relative) (%) | 100.0" in table


def test_wilson_interval_and_fleiss_kappa_known_values():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0 and wilson_interval(10, 10)[1] == pytest.approx(1)
    agree = np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    assert fleiss_kappa(agree) == pytest.approx(1.0)
    # Fleiss (1971)-style hand computation: 4 items, 2 raters, one disagreement
    assert fleiss_kappa(np.array([[1, 1], [0, 0], [1, 0], [0, 0]])) == pytest.approx(0.4667, abs=1e-3)


def _browser():
    """A headless Chromium driven through its system chromedriver (no download), or the reason there is none."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[dev]')"
    if not chromium or not driver:
        return (
            None,
            "no Chromium/chromedriver from the system's package manager (apt-get install chromium chromium-driver)",
        )
    return (chromium, driver), ""


BROWSER, NO_BROWSER = _browser()


@pytest.mark.skipif(
    BROWSER is None and not os.environ.get("DIFFTUMOR_REQUIRE_BROWSER"), reason=NO_BROWSER or "no browser"
)
def test_the_kit_page_in_a_real_browser(study, tmp_path):
    """Load, scroll, answer by key and by click, go back, reload and resume, export; score the export."""
    assert BROWSER is not None, NO_BROWSER
    os.environ["SE_OFFLINE"] = "true"  # selenium must not fetch a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root, _ = study
    downloads = tmp_path / "downloads"
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,620"):
        options.add_argument(argument)
    options.binary_location = BROWSER[0]
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads)})
    driver = webdriver.Chrome(service=Service(BROWSER[1]), options=options)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get((root / "kit" / "index.html").as_uri())
        driver.find_element(By.ID, "reader").send_keys("R-test")
        driver.find_element(By.ID, "begin").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 1 of 12"))
        slices = lambda: driver.execute_script("return readerStudy.view().slices")  # noqa: E731
        start = slices()
        coronal = ScrollOrigin.from_element(driver.find_element(By.ID, "coronal"))
        ActionChains(driver).scroll_from_origin(coronal, 0, 100).perform()  # the mouse wheel, one notch down
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("\ue013\ue013")  # ArrowUp twice: axial
        assert slices()["coronal"] == start["coronal"] + 1 and slices()["axial"] == start["axial"] - 2
        body.send_keys("r4")  # real, confidence 4, by key
        body.send_keys("\ue014")  # ArrowRight: next
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 2 of 12 · 1 answered"))
        driver.find_element(By.ID, "answer-synthetic").click()
        driver.find_element(By.CSS_SELECTOR, ".confidence[data-value='2']").click()
        # Enter with the confidence button still focused moves on, and answers nothing on the next volume
        driver.switch_to.active_element.send_keys("\ue007")
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 3 of 12 · 2 answered"))
        assert len(driver.execute_script("return readerStudy.state().answers")) == 2
        driver.find_element(By.ID, "back").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 2 of 12"))
        driver.find_element(By.ID, "back").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 1 of 12 · 2 answered"))
        assert "chosen" in driver.find_element(By.ID, "answer-real").get_attribute("class")
        driver.find_element(By.ID, "preset-soft").click()
        assert driver.execute_script("return [readerStudy.view().width, readerStudy.view().level]") == [400, 40]
        driver.save_screenshot(str(tmp_path / "reader_study.png"))
        if os.environ.get("DIFFTUMOR_UPDATE_SCREENSHOTS"):
            shutil.copyfile(tmp_path / "reader_study.png", REPO / "docs" / "images" / "reader_study.png")

        driver.refresh()  # the tab closed and opened again: the same reader id resumes the answers
        field = wait.until(lambda d: d.find_element(By.ID, "reader"))
        assert field.get_attribute("value") == ""  # not pre-filled: another reader must not resume R-test by a click
        field.send_keys("R-test")
        driver.find_element(By.ID, "begin").click()
        wait.until(lambda d: "2 answered" in d.find_element(By.ID, "progress").text)
        driver.find_element(By.ID, "export").click()
        exported = downloads / "answers-R-test.json"
        for _ in range(100):
            if exported.exists() and exported.stat().st_size:
                break
            time.sleep(0.1)
        answers = json.loads(exported.read_text())
        driver.refresh()  # another reader on the same browser starts afresh and leaves R-test's answers alone
        field = wait.until(lambda d: d.find_element(By.ID, "reader"))
        field.clear()
        field.send_keys("R-other")
        driver.find_element(By.ID, "begin").click()
        wait.until(lambda d: d.find_element(By.ID, "progress").text.startswith("Volume 1 of 12 · 0 answered"))
        driver.refresh()
        field = wait.until(lambda d: d.find_element(By.ID, "reader"))
        field.clear()
        field.send_keys("R-test")
        driver.find_element(By.ID, "begin").click()
        wait.until(lambda d: "2 answered" in d.find_element(By.ID, "progress").text)
    finally:
        driver.quit()
    key = json.loads((root / "key.json").read_text())
    assert answers["kit_id"] == key["kit_id"] and answers["reader"] == "R-test"
    first, second = sorted(answers["answers"])
    assert answers["answers"][first]["answer"] == "real" and answers["answers"][first]["confidence"] == 4
    assert answers["answers"][second]["answer"] == "synthetic" and answers["answers"][second]["confidence"] == 2
    assert all(entry["seconds"] >= 0 for entry in answers["answers"].values())
    result = score(root / "key.json", [exported])
    assert result["readers"][0]["answered"] == 2
