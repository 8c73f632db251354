"""The Gradio demo as a person uses it: its functions through gradio_client against a launched
app, and a real browser (Playwright driving Debian's Chromium) clicking through the page."""

import os
import shutil
import socket
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")

from apps.demo import (  # noqa: E402
    JOB_MAX_AGE_S,
    MAX_JOBS,
    Cancelled,
    DemoApp,
    Limits,
    _preview,
    build_demo,
    serve,
)
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
    demo = build_demo(sep, Limits(max_upload_mb=2, max_seconds=60, max_queue=3), root)
    port = _free_port()
    serve(demo, port=port, block=False)
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
    assert text.count("dBTP") == 2
    kept = audio.read(app.remix(six, {"dialogue": 0.0}, set(), set()))[0]
    assert kept.shape == film.shape  # the remix download keeps the 5.1 layout
    np.testing.assert_allclose(kept, audio.read(six.tracks["original"])[0], atol=1e-4)
    jobs = set((app.root / "jobs").iterdir())
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        app.separate(clip, "film", None, cancel=cancel)
    assert set((app.root / "jobs").iterdir()) <= jobs  # a cancelled job keeps nothing
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
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}config", timeout=30) as response:
        config = json.load(response)
    assert config["analytics_enabled"] is False  # no telemetry unless the user opts in


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_in_a_real_browser(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, _, clip, root = served
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
                "--autoplay-policy=no-user-gesture-required",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url)
        page.locator("input[type=file]").first.set_input_files(str(clip))
        expect(page.get_by_text("scene_01.wav").first).to_be_visible(timeout=20_000)
        page.get_by_role("button", name="Separate", exact=True).click()
        expect(page.get_by_text("Separated scene_01")).to_be_visible(timeout=120_000)
        # the mixer: the film head's stems and the original, grouped, with levels
        play = page.locator("#mixer .dx-play")
        expect(play).to_be_enabled(timeout=30_000)
        rows = page.locator("#mixer .dx-track")
        assert rows.count() == 4
        groups = [
            " ".join(g.split()) for g in page.locator("#mixer .dx-group-title").all_inner_texts()
        ]
        assert len(groups) == 2 and "Listening Film head: dialogue" in groups[0], groups
        assert groups[1].endswith("Original"), groups
        levels = page.locator("#mixer .dx-levels").all_inner_texts()
        assert all("LUFS" in t and "dBTP" in t for t in levels), levels
        # one clock for every track: playing moves the shared playhead
        play.click()
        page.wait_for_function(
            "document.querySelector('#mixer .dx-clock').textContent.split(' / ')[0] > '0:00.3'",
            timeout=10_000,
        )
        play.click()  # pause
        row = page.locator('#mixer .dx-track[data-label="dialogue"]')
        row.locator(".dx-solo").click()
        audible = {
            label: page.locator(f'#mixer .dx-track[data-label="{label}"]').get_attribute(
                "data-audible"
            )
            for label in ("dialogue", "music", "effects", "original")
        }
        assert audible == {"dialogue": "true", "music": "false", "effects": "false",
                           "original": "false"}  # fmt: skip
        row.locator(".dx-solo").click()
        page.locator('#mixer .dx-listen[data-key="original"]').click()  # A/B against the mix
        assert (
            page.locator('#mixer .dx-track[data-label="original"]').get_attribute("data-audible")
            == "true"
        )
        assert row.get_attribute("data-audible") == "false"
        page.locator('#mixer .dx-listen[data-key="film"]').click()
        row.locator(".dx-fader").evaluate(
            "el => { el.value = 6; el.dispatchEvent(new Event('input')); }"
        )
        expect(row.locator(".dx-gain")).to_have_text("6.0 dB")
        page.locator("#mixer .dx-render").click()
        link = page.locator("#remix-file a[download]").first
        expect(link).to_be_attached(timeout=60_000)
        remix_file = tmp_path / "remix.wav"
        remix_file.write_bytes(page.request.get(link.get_attribute("href")).body())
        remix, _ = audio.read(remix_file)
        original, _ = audio.read(clip)
        assert remix.shape == original.shape
        job = max((root / "jobs").iterdir(), key=lambda p: p.stat().st_mtime)
        dialogue, _ = audio.read(job / "main" / "original" / "dialogue.wav")
        expected = original + (10 ** (6 / 20) - 1) * dialogue  # dialogue +6 dB, the rest as is
        np.testing.assert_allclose(remix, expected, atol=2e-4)
        page.get_by_role("button", name="Compare two tracks (A/B)").click()
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_text("A − B")).to_be_visible(timeout=30_000)
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
    jobs = list((app.root / "jobs").iterdir())
    assert len(jobs) == 6  # fresh results stay: another user may still compare or remix them
    hour_ago = time.time() - 2 * JOB_MAX_AGE_S
    for folder in jobs:
        os.utime(folder, (hour_ago, hour_ago))
    app.separate(clip, "film", ["dialogue"])
    assert len(list((app.root / "jobs").iterdir())) == 5  # old ones go but the 4 newest


@pytest.mark.parametrize(
    ("channels", "channel", "sides"),
    [(3, 1, (0, 1)), (5, 3, (1, 0)), (6, 3, (0, 0)), (8, 6, (1, 0)), (8, 7, (0, 1)),
     (6, 2, (1, 1))],
)  # fmt: skip
def test_stereo_preview_folds_each_speaker_to_its_side(channels, channel, sides):
    """3.0 R, 5.0 back left, 7.1 side left/right to their side; LFE nowhere; C to both."""
    x = np.zeros((channels, 100), np.float32)
    x[channel] = 0.5
    folded = _preview(x)
    assert folded.shape == (2, 100)
    assert tuple(int(v > 0.1) for v in folded[:, 0]) == sides, folded[:, 0]


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
    assert proc.returncode == 0  # SIGTERM closes the server as Ctrl-C does
    assert not list(tmp_path.glob("demix-demo-*"))  # and its temporary folder is removed


def test_demix_demo_with_a_bad_model_is_one_line(tiny_checkpoint, tmp_path):
    """``demix demo --model`` or ``--compare`` naming no checkpoint: one line, exit 2, and no
    temporary app folder left behind."""
    import subprocess
    import sys

    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp_path))
    for args in (
        ["--model", "no-such-model"],
        ["--model", str(tiny_checkpoint), "--compare", str(tmp_path / "gone.safetensors")],
    ):
        run = subprocess.run(
            [sys.executable, "-m", "demix.cli", "demo", *args, "--port", str(_free_port())],
            capture_output=True, text=True, env=env, timeout=180,
        )  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("demix: "), lines
        assert args[-1].split("/")[-1] in lines[0]
    assert not list(tmp_path.glob("demix-demo-*"))


def test_demix_demo_with_bad_settings_is_one_line(tmp_path):
    """A user trial: ``--port 99999`` was a Gradio traceback, negative limits started the
    server, a taken port named Gradio's environment variables and a bad host spoke of an
    empty port range. Each is one line naming the setting, exit 2, before Gradio starts."""
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        for args, reason in (
            (["--port", "99999"], "--port 99999: choose 1 to 65535"),
            (["--max-upload-mb", "-5"], "--max-upload-mb -5: give a positive limit"),
            (["--max-queue", "0"], "--max-queue 0: give a positive limit"),
            (["--port", str(busy)], f"--port {busy}: in use on 127.0.0.1"),
            (["--host", "256.1.1.1"], "--host 256.1.1.1: not an address or host name"),
        ):
            run = subprocess.run(
                [sys.executable, "-m", "demix.cli", "demo", *args], capture_output=True,
                text=True, timeout=180,
            )  # fmt: skip
            assert run.returncode == 2, (args, run.stderr)
            lines = run.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"demix demo: {reason}"), lines


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def test_server_limits_uploads_names_and_served_files(served, tmp_path):
    """Uploads over the limit are refused by the server; a hostile file name stays a name;
    only the app folder's files are served."""
    import requests

    url, _, _, root = served
    big = tmp_path / "big.wav"
    audio.write(big, np.zeros((2, 44100 * 15), np.float32), 44100, "wav", "16")  # 2.6 MB > 2 MB
    with big.open("rb") as f:
        refused = requests.post(f"{url}gradio_api/upload", files={"files": ("big.wav", f)})
    assert refused.status_code == 413, refused.text
    clip = write_demo_clip(tmp_path / "ok.wav", 1.0)
    with clip.open("rb") as f:
        sent = requests.post(
            f"{url}gradio_api/upload", files={"files": ("../../../../tmp/evil name.wav", f)}
        )
    assert sent.status_code == 200, sent.text
    stored = Path(sent.json()[0])
    assert stored.resolve().is_relative_to(root.resolve()), stored
    assert stored.name == "evil name.wav" and not Path("/tmp/evil name.wav").exists()
    assert requests.get(f"{url}gradio_api/file={stored}").status_code == 200
    for outside in ("/etc/passwd", f"{root}/../../etc/passwd", str(Path(__file__).resolve())):
        assert requests.get(f"{url}gradio_api/file={outside}").status_code in (403, 404)


def test_ten_clients_are_served_in_turn_or_told_the_queue_is_full(served, tmp_path):
    """Ten browsers at once: one separation runs at a time, three wait, the others are told
    the queue is full; every client gets an answer and memory stays bounded."""
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    url, _, _, root = served
    clip = write_demo_clip(tmp_path / "short.wav", 2.0)
    before = _rss_mb()

    def one(i: int) -> str:
        client = Client(url, verbose=False)
        try:
            result = client.predict(
                handle_file(str(clip)), "film", ["dialogue"], "none", api_name="/run"
            )
        except Exception as exc:  # noqa: BLE001 - the answer is what the test inspects
            return f"error: {exc}"
        return result[0]

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(one, range(10), timeout=600))
    served_ok = [a for a in answers if a.startswith("Separated")]
    full = [a for a in answers if "queue is full" in a.lower()]
    assert len(served_ok) + len(full) == 10, answers
    assert served_ok and full, answers
    assert len(list((root / "jobs").iterdir())) <= MAX_JOBS  # job folders stay bounded
    assert _rss_mb() - before < 400, f"RSS grew by {_rss_mb() - before:.0f} MB"


def test_demo_binds_loopback_unless_told(tiny_checkpoint, tmp_path):
    """``demix demo`` listens on 127.0.0.1 only (not 0.0.0.0) unless --host says otherwise."""
    import subprocess
    import sys
    import time

    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-m", "demix.cli", "demo", "--model", str(tiny_checkpoint),
         "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
    )  # fmt: skip
    try:
        listening = []
        deadline = time.time() + 120
        while time.time() < deadline and not listening and proc.poll() is None:
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                with open(table) as f:
                    for line in f.readlines()[1:]:
                        local, state = line.split()[1], line.split()[3]
                        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                            listening.append(local.rsplit(":", 1)[0])
            time.sleep(0.5)
        assert listening, "demix demo never listened"
        assert set(listening) == {"0100007F"}, listening  # 127.0.0.1, nothing else
    finally:
        proc.terminate()
        proc.wait(30)


def test_uploads_kept_as_they_are_and_a_very_short_clip_compares(tiny_checkpoint, tmp_path):
    """A float WAV above full scale is separated unclipped (the original is the upload
    itself), and a clip shorter than a spectrogram window still compares."""
    sep = Separator.from_pretrained(str(tiny_checkpoint))
    app = DemoApp(sep, Limits(), tmp_path / "root")
    loud = tmp_path / "loud.wav"
    x = np.stack([np.linspace(-1.5, 1.5, 44100), np.zeros(44100)]).astype(np.float32)
    audio.write(loud, x, 44100, "wav", "32f")
    job = app.separate(loud, "film", ["dialogue"])
    assert job.tracks["original"].read_bytes() == loud.read_bytes()
    rebuilt = audio.read(job.tracks["dialogue"])[0] + audio.read(job.tracks["rest"])[0]
    assert np.abs(rebuilt - x).max() < 1e-4  # the stems sum to the unclipped upload
    short = tmp_path / "blip.wav"
    audio.write(short, x[:, :400], 44100, "wav", "24")
    *_, text = app.compare(app.separate(short, "film", None), "original", "dialogue")
    assert "LUFS" in text


def test_a_layout_past_wavs_speakers_is_separated_by_its_speakers(
    tiny_checkpoint, tmp_path, monkeypatch
):
    """A 9.1.6 reel (TSL and TSR: speakers a WAV cannot name) was separated in the demo from
    its decoded copy, as 16 unlabelled tracks: its LFE went into dialogue too. It is planned
    by its speakers now, as ``demix separate`` plans it: the LFE wholly to effects."""
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    exe = imageio_ffmpeg.get_ffmpeg_exe()  # (Debian 12's ffmpeg 5.1 has no 9.1.6)
    monkeypatch.setattr(audio, "ffmpeg_executable", lambda: exe)
    from test_audio import run_ffmpeg

    rng = np.random.default_rng(3)
    tracks = tmp_path / "tracks.wav"
    audio.write(tracks, (0.1 * rng.standard_normal((16, 24000))).astype(np.float32), 48000,
                "wav", "24", 0)  # fmt: skip
    reel = tmp_path / "reel.mkv"
    run_ffmpeg("-i", str(tracks), "-af", f"channelmap=map={'|'.join(map(str, range(16)))}"
               ":channel_layout=9.1.6", "-c:a", "pcm_s24le", str(reel))  # fmt: skip
    speakers = audio.info(reel).speakers
    if not speakers or "TSL" not in speakers:
        pytest.skip("this ffmpeg does not name the 9.1.6 layout")
    app = DemoApp(Separator.from_pretrained(str(tiny_checkpoint)), Limits(), tmp_path / "root")
    job = app.separate(reel, "film", None)
    dialogue = audio.read(job.tracks["dialogue"])[0]
    effects = audio.read(job.tracks["effects"])[0]
    original = audio.read(job.tracks["original"])[0]
    lfe = speakers.index("LFE")
    assert not dialogue[lfe].any()  # the LFE is not separated: all of it is effects
    np.testing.assert_allclose(effects[lfe], original[lfe], atol=1e-6)
    assert dialogue[speakers.index("TSL")].any()
    total = sum(audio.read(job.tracks[s])[0] for s in ("dialogue", "music", "effects"))
    np.testing.assert_allclose(total, original, atol=1e-4)
    assert _preview(original, speakers).shape[0] == 2
