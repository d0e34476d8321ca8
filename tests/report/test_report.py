"""`kiln report`: the page's sections, what it says about stages not run yet, escaping, and that
it needs nothing outside itself."""

from __future__ import annotations

import base64
import json
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml

from kiln.cli import main
from kiln.errors import RunDirError
from kiln.metrics import macro_f1
from kiln.report import REPORT_FILE, SECTION_IDS, render_report, write_report
from kiln.report.training import per_class_metrics
from kiln.runtime import choose_artifact
from tests.report.conftest import ODD_FOLDER, ODD_LABEL


class Page(HTMLParser):
    """The parts of a page the tests look at: each section's text, images, links, scripts."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, list[str]] = {}
        self.images: list[str] = []
        self.urls: list[str] = []  # every src and href
        self.scripts = 0
        self._open: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and a.get("id"):
            self._open.append(str(a["id"]))
            self.sections[str(a["id"])] = []
        if tag == "img":
            self.images.append(str(a.get("src")))
        self.urls += [str(v) for k, v in attrs if k in ("src", "href")]
        self.scripts += tag == "script"
        if self._open and tag in ("td", "th", "li", "p", "h3", "tr", "br"):
            self.sections[self._open[-1]].append(" ")  # cells read apart, as a browser shows them

    def handle_endtag(self, tag: str) -> None:
        if tag == "section" and self._open:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        if self._open:
            self.sections[self._open[-1]].append(data)

    def text(self, section: str) -> str:
        return " ".join("".join(self.sections[section]).split())


def png_size(src: str) -> tuple[int, int]:
    """Width and height of an embedded PNG, read from its header."""
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix), src[:40]
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_a_benchmarked_run_gets_every_section_with_its_numbers(benched_run: Path) -> None:
    path = write_report(benched_run)
    assert path == benched_run / REPORT_FILE
    page = Page(path.read_text(encoding="utf-8"))
    assert list(page.sections) == list(SECTION_IDS)
    for section in SECTION_IDS:
        assert "not run yet" not in page.text(section), section
        assert "could not be built" not in page.text(section), section

    parity = json.loads((benched_run / "export" / "parity.json").read_text())
    for entry in parity["artifacts"]:  # one row per artifact, with its own numbers
        assert f"{entry['artifact']} {entry['file']}" in page.text("export")
        assert f"{entry['max_abs_diff']:.2e}" in page.text("export")
    exported_manifest = json.loads((benched_run / "export" / "kiln.json").read_text())
    exported = exported_manifest["export"]
    preferred = exported.get("preferred") or exported["recommended"]  # the name before 0.13
    assert f"preferred before a benchmark {preferred}" in page.text("export")
    bench = json.loads((benched_run / "bench" / "report.json").read_text())
    assert set(bench["results"]) == {"torch-fp32", "onnx-fp32", "onnx-int8-dynamic"}
    for name, result in bench["results"].items():
        assert f"{name} {result['latency_b1_real']['p50_ms']:.2f}" in page.text("benchmark")
    # what kiln serve serves, why (the measurement behind it), and against the trained model
    picked = choose_artifact(benched_run / "export", exported_manifest)
    assert picked.measured and picked.name == bench["recommended"]
    ratio = bench["ratios"][picked.name]["p50_real_vs_eager_real"]
    assert (f"recommended artifact {picked.name}: {picked.reason}, {ratio:.2f}x the p50 of the "
            "trained model (torch-fp32)") in page.text("summary")
    assert f"serve {benched_run} # {picked.name} as model 'run'" in page.text("serve")
    manifest = json.loads((benched_run / "model" / "kiln.json").read_text())
    assert f"best eval accuracy {manifest['training']['eval']['accuracy']:.4f}" in page.text(
        "summary")
    for label in manifest["labels"]:
        assert label in page.text("evaluation") and label in page.text("data")
    assert "train 400" in page.text("data") and "eval 80" in page.text("data")
    for command in ("serve", "deploy", "triton"):
        assert f"kiln {command} {benched_run}" in page.text("serve")
    assert f"kiln predict {benched_run} --data FILE" in page.text("serve")

    # loss, learning rate, eval metrics, text lengths, confusion matrix, latency, throughput
    assert len(page.images) == 7
    assert all(min(png_size(src)) > 100 for src in page.images)


def test_the_page_needs_nothing_outside_itself(benched_run: Path) -> None:
    text = render_report(benched_run)
    page = Page(text)
    assert page.scripts == 0
    assert [u for u in page.urls if not u.startswith(("#", "data:"))] == []
    assert "url(" not in text and "@import" not in text
    assert "http://" not in text and "https://" not in text


def test_a_trained_only_run_says_what_to_run_next(trained_run: Path) -> None:
    page = Page(write_report(trained_run).read_text(encoding="utf-8"))
    assert list(page.sections) == list(SECTION_IDS)
    assert f"export not run yet: run kiln export {trained_run}" in page.text("export")
    assert f"then the benchmark: kiln bench {trained_run}" in page.text("benchmark")
    assert "recommended artifact torch-fp32: the trained model itself" in page.text("summary")
    assert f"kiln serve {trained_run}" in page.text("serve")
    assert len(page.images) == 5  # training curves, text lengths and the confusion matrix
    assert not any("could not be built" in page.text(s) for s in SECTION_IDS)


def test_strings_from_the_run_are_escaped(trained_run: Path) -> None:
    text = render_report(trained_run)
    assert ODD_LABEL not in text and "<i>" not in text
    assert "&lt;b&gt;&amp;&quot;x" in text  # the label, in the tables
    assert ODD_FOLDER.replace("<", "&lt;").replace(">", "&gt;").replace("&x", "&amp;x") in text
    page = Page(text)
    assert ODD_LABEL in page.text("evaluation") and ODD_LABEL in page.text("data")


def test_a_run_whose_data_moved_shows_what_it_recorded(benched_run: Path,
                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(benched_run, run, ignore=shutil.ignore_patterns("*.onnx", "*.bin", "*.xml"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(train=str(tmp_path / "moved" / "train.csv"),
                          eval=str(tmp_path / "moved" / "eval.csv"))
    (run / "config.yaml").write_text(yaml.safe_dump(config))

    page = Page(render_report(run))
    data = page.text("data")
    assert f"not read ({tmp_path / 'moved' / 'train.csv'} is not there now)" in data
    assert "train not recorded not recorded" in data  # no size, no lengths
    assert "eval 80 not recorded" in data  # the size training recorded, no lengths
    manifest = json.loads((run / "model" / "kiln.json").read_text())
    for label, row in zip(manifest["labels"], manifest["training"]["eval"]["confusion"]):
        assert f"{label} not recorded {sum(row)} ({sum(row) / 80:.1%})" in data
    assert "recorded by export on 80 eval texts" in data  # the drift reference's lengths
    assert len(page.images) == 7


def test_per_class_metrics_agree_with_the_macro_f1_of_training() -> None:
    matrix = [[5, 1, 0], [2, 3, 0], [0, 0, 0]]  # the third class is never seen nor predicted
    metrics = per_class_metrics(matrix)
    assert metrics[0] == pytest.approx((5 / 7, 5 / 6, 2 * (5 / 7) * (5 / 6) / (5 / 7 + 5 / 6), 6))
    assert metrics[2] == (0.0, 0.0, 0.0, 0)
    assert np.mean([m[2] for m in metrics]) == pytest.approx(macro_f1(np.array(matrix)))


def test_unreadable_and_missing_files_cost_only_their_part(benched_run: Path,
                                                           tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(benched_run, run, ignore=shutil.ignore_patterns("*.onnx", "*.bin", "*.xml"))
    (run / "bench" / "report.json").write_text('{"results": {"onnx-fp32": ')  # cut short
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 99, "kind": "tr')  # a run killed mid-line
    (run / "export" / "parity.json").write_text('{"artifacts": [{"artifact": "onnx-fp32"}]}')
    (run / "model" / "kiln.json").unlink()

    page = Page(write_report(run).read_text(encoding="utf-8"))
    assert list(page.sections) == list(SECTION_IDS)
    summary = page.text("summary")
    assert "bench/report.json: could not be read" in summary
    assert "metrics.jsonl: 1 line(s) not a JSON object, skipped" in summary
    assert f"no trained model yet (model/kiln.json): run kiln train {run}" in page.text(
        "evaluation")
    assert f"benchmark not run yet: run kiln bench {run}" in page.text("benchmark")
    assert "onnx-fp32 not recorded" in page.text("export")  # a row without its numbers
    assert len(page.images) == 4  # the training curves and the text lengths remain


def test_a_folder_that_is_not_a_run_is_refused(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(RunDirError, match="no such folder"):
        write_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kiln report: error: ") and "is not a kiln run" in err
    assert not (tmp_path / "empty" / REPORT_FILE).exists()


def test_the_command_prints_where_it_wrote(trained_run: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pages" / "trained.html"
    assert main(["report", str(trained_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out}" in printed and out.resolve().as_uri() in printed
    assert Page(out.read_text(encoding="utf-8")).sections.keys() == set(SECTION_IDS)
    assert [p.name for p in out.parent.iterdir()] == ["trained.html"]  # no temporary left
