"""The Gradio demo as a person uses it: its functions through gradio_client against a launched
app, and a real browser (Playwright driving Debian's Chromium) clicking through the page."""

import os
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from apps.demo import DemoApp, Limits, build_demo  # noqa: E402
from demix import Separator, audio  # noqa: E402
from demix.demo import write_demo_clip  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).parent / "_artifacts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("demo-root")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    demo = build_demo(sep, Limits(max_upload_mb=50, max_seconds=60), root)
    port = _free_port()
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        allowed_paths=[str(root)],
    )
    clip = write_demo_clip(tmp_path_factory.mktemp("clip") / "scene_01.wav", 6.0)
    yield f"http://127.0.0.1:{port}/", demo, clip, root
    demo.close()


def test_app_actions_and_limits(tiny_checkpoint, tmp_path):
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    app = DemoApp(sep, Limits(max_upload_mb=50, max_seconds=5), tmp_path / "root")
    clip = write_demo_clip(tmp_path / "clip.wav", 4.0)
    job = app.separate(clip, "film", ["dialogue"])
    assert list(job.tracks) == ["original", "dialogue", "rest"]
    assert all(p.is_relative_to(app.root) for p in job.tracks.values())
    mix, _ = audio.read(clip)
    rebuilt = audio.read(job.tracks["dialogue"])[0] + audio.read(job.tracks["rest"])[0]
    assert np.abs(rebuilt - mix).max() < 1e-3
    muted = audio.read(app.remix(job, {"dialogue": -60.0, "rest": 0.0}, set(), set()))[0]
    np.testing.assert_allclose(muted, audio.read(job.tracks["rest"])[0], atol=1e-5)
    solo = audio.read(app.remix(job, {}, set(), {"dialogue"}))[0]
    np.testing.assert_allclose(solo, audio.read(job.tracks["dialogue"])[0], atol=1e-5)
    _, _, image_a, _, text = app.compare(job, "original", "dialogue")
    assert image_a.ndim == 3 and "LUFS" in text
    names = zipfile.ZipFile(app.zip(job)).namelist()
    assert names == ["clip/dialogue.wav", "clip/rest.wav"]
    surround = tmp_path / "surround.wav"  # 5.1: dialogue in C, music in L/R, LFE
    film = np.zeros((6, mix.shape[1]), np.float32)
    film[0], film[1], film[2], film[3] = mix[0], mix[1], 0.5 * mix.mean(0), 0.1 * mix[0]
    audio.write(surround, film, 44100, "wav", "24")
    six = app.separate(surround, "film", None)
    _, _, _, _, text = app.compare(six, "original", "dialogue")
    assert text.count("LUFS") == 2 and "A − B" in text  # BS.1770 for 5.1, not an error
    both = app.separate(clip, "both", None)
    unity = audio.read(app.remix(both, {}, set(), set()))[0]
    np.testing.assert_allclose(unity, mix, atol=2e-3)  # not 6 dB too loud
    with pytest.raises(Exception, match="too long"):
        app.separate(write_demo_clip(tmp_path / "long.wav", 8.0), "film", None)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    with pytest.raises(Exception, match="unsupported format"):
        app.separate(text_file, "film", None)
    fake = tmp_path / "fake.wav"
    fake.write_text("not audio")
    with pytest.raises(Exception, match="cannot read"):
        app.separate(fake, "film", None)


def test_through_gradio_client(served):
    from gradio_client import Client, handle_file

    url, _, clip, root = served
    client = Client(url, verbose=False)
    result = client.predict(
        handle_file(str(clip)), "music", ["vocals", "drums"], "none", api_name="/run"
    )
    # gr.State outputs are not sent to clients: the status text comes first
    status = result[0]
    zip_path = next(r for r in result if isinstance(r, str) and r.endswith(".zip"))
    assert "Separated" in status and "vocals" in status and "rest" in status
    names = zipfile.ZipFile(zip_path).namelist()
    assert sorted(names) == ["scene_01/drums.wav", "scene_01/rest.wav", "scene_01/vocals.wav"]
    with pytest.raises(Exception, match="at least one stem"):
        client.predict(handle_file(str(clip)), "film", [], "none", api_name="/run")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _, clip, _ = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        page.goto(url)
        page.locator("input[type=file]").first.set_input_files(str(clip))
        expect(page.get_by_text("scene_01.wav").first).to_be_visible(timeout=20_000)
        page.get_by_role("button", name="Separate", exact=True).click()
        expect(page.get_by_text("Separated scene_01")).to_be_visible(timeout=120_000)
        expect(page.locator("audio").first).to_be_attached(timeout=20_000)
        assert page.get_by_text("dialogue").count() > 0
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("A − B")).to_be_visible(timeout=30_000)
        assert page.get_by_text("LUFS").count() > 0
        gain = page.locator("input[type=number]").first  # the first remix slider's box
        gain.fill("6")
        gain.press("Enter")
        page.get_by_role("button", name="Render remix").click()
        link = page.locator("#remix-audio a[download]")
        expect(link).to_be_attached(timeout=60_000)
        remix_file = tmp_path / "remix.wav"
        remix_file.write_bytes(page.request.get(link.get_attribute("href")).body())
        remix, _ = audio.read(remix_file)
        original, _ = audio.read(clip)
        assert remix.shape == original.shape
        assert np.abs(remix - original).max() > 1e-3  # the +6 dB on the first stem took effect
        with page.expect_download(timeout=30_000) as download:
            page.locator("#download a[download]").first.click()
        target = tmp_path / "stems.zip"
        download.value.save_as(target)
        names = zipfile.ZipFile(target).namelist()
        assert sorted(names) == [
            "scene_01/dialogue.wav",
            "scene_01/effects.wav",
            "scene_01/music.wav",
        ]
        page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
        browser.close()


def test_second_model_for_ab_and_bounded_job_folders(tiny_checkpoint, tmp_path):
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    other = Separator.from_pretrained("demix-small")
    app = DemoApp(sep, Limits(), tmp_path / "root", others={"demix-small": other})
    clip = write_demo_clip(tmp_path / "clip.wav", 3.0)
    job = app.separate(clip, "film", ["dialogue"], compare_model="demix-small")
    assert list(job.tracks) == [
        "original",
        "dialogue",
        "rest",
        "demix-small:dialogue",
        "demix-small:rest",
    ]
    *_, text = app.compare(job, "dialogue", "demix-small:dialogue")
    assert "demix-small:dialogue" in text
    assert "clip/demix-small_dialogue.wav" in zipfile.ZipFile(app.zip(job)).namelist()
    for _ in range(5):
        app.separate(clip, "film", ["dialogue"])
    assert len(list((app.root / "jobs").iterdir())) == 5  # the 4 previous jobs + the current


@pytest.mark.parametrize("extra", [[], ["--max-upload-mb", "200"], ["--max-upload-mb", "12.5"]])
def test_demix_demo_command_serves_the_page(tiny_checkpoint, tmp_path, extra):
    """The real entry point, as a user starts it: ``demix demo`` in its own process answers
    HTTP on 127.0.0.1 (the tests above build the app themselves and never reach launch())."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "demix.cli", "demo", "--model", str(tiny_checkpoint),
         "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        page = None
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    page = r.read().decode("utf-8", "replace")
                break
            except OSError:
                time.sleep(0.5)
        if page is None:
            proc.kill()
            pytest.fail(f"demix demo did not serve the page:\n{proc.communicate()[0][-3000:]}")
        assert "gradio" in page.lower()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
