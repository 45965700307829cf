"""The search page in a real browser: headless Chromium (Debian's
``chromium``, ``.ci/run`` installs it) driven by Playwright against the
server on a small index of synthetic clips (tests/tools/conftest.py).

A query typed and submitted shows the JSON API's ranking (same videos, same
order, the scores as the page formats them) as frame strips that actually
loaded; clicking a result plays it in the <video> element (it reaches
``readyState >= 2``, its clock advances, it is not paused, no ``error``, and
the frame it shows is the clip's), from the segment's start for an index
row with a segment; a refused query shows why; a file named
``<img src=x onerror=alert(1)>.mp4`` shows as text. A screenshot of the
page is checked to be a PNG; with ``MMCLIP4CLIP_SCREENSHOT=PATH`` it is
written to PATH (the README's picture: see docs/search.md).

Playwright rather than Selenium + chromedriver: it waits for page
conditions itself (``wait_for_function``), reports dialogs, uncaught page
errors and requests as events (so "no alert fired" and "no request sent"
are checked, not assumed), and needs no driver binary matched to the
browser's version; it is pointed at Debian's Chromium
(``executable_path``, never ``playwright install``, which downloads a
browser). ``CHROMIUM`` names another executable.

The synthetic clips are H.264 (High profile, yuv420p) in MP4. Debian's
Chromium plays them: its built-in FFmpeg has the H.264 decoder (the binary
holds its name, "H.264 / AVC / MPEG-4 AVC / MPEG-4 part 10";
``canPlayType('video/mp4; codecs="avc1.64001E"')`` is ``'probably'``), and
the test compares a shown frame with PyAV's, so it checks decoding, not
only the clock. A Chromium built without proprietary
codecs fails this test: the page has no other format to offer.

The server is the app ``tools/search_server.py`` serves (``create_app``
with its default hosts) under uvicorn in a thread of this process, on a
socket bound to port 0 beforehand: no port can be taken between choosing
and listening, and the model, already imported, loads in a second, where
the tool's own process takes ten (test_search_server.py runs that one).
A missing browser or Playwright is a failure, not a skip.
"""
import copy
import io
import os
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from helpers import EVIL_VIDEO_NAME, WEB_INDEX_CLIPS
from PIL import Image
from playwright.sync_api import sync_playwright

from mmclip4clip.apis import load_index
from mmclip4clip.apis.index import save_index
from mmclip4clip.apis.web import STRIP_FRAMES, STRIP_HEIGHT, create_app

CHROMIUM = os.environ.get('CHROMIUM', '/usr/bin/chromium')
# Resolved now: the tests run in a workspace (web_workspace changes folder).
SCREENSHOT = (Path(os.environ['MMCLIP4CLIP_SCREENSHOT']).resolve()
              if os.environ.get('MMCLIP4CLIP_SCREENSHOT') else None)
# Headless, and quiet on a closed network: without the background
# networking flags Chromium keeps trying to reach Google's services.
# Playwright gives each launch a new, empty --user-data-dir itself.
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu',
                 '--disable-quic', '--no-first-run',
                 '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
VIEWPORT = dict(width=1000, height=640)
# The segment given to every other row of the served index (the clips last
# 2 s at 10 frames per second).
SEGMENT = (0.5, 1.8)
QUERY = 'a red square moves left'
TIMEOUT_MS = 20_000
# Page-side records: CSP violations (dialogs are caught by Playwright, but
# a handler the CSP blocked would only show as a violation), and the
# player's events, so that a short segment cannot end between two polls.
INIT_SCRIPT = """
window.__violations = [];
document.addEventListener('securitypolicyviolation',
  e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));
window.__playing = [];
document.addEventListener('playing',
  e => window.__playing.push([e.target.src, e.target.currentTime]), true);
window.__progress = [];
document.addEventListener('timeupdate', e => window.__progress.push(
  [e.target.src, e.target.currentTime, e.target.paused]), true);
"""
PLAYER_STATE = """() => {
  const v = document.getElementById('player');
  return {src: v.src, readyState: v.readyState, currentTime: v.currentTime,
          paused: v.paused, error: v.error && (v.error.code + ' ' +
          v.error.message), videoWidth: v.videoWidth};
}"""


@pytest.fixture(scope='module')
def served_index(web_index_dir, tmp_path_factory) -> Path:
    """The fixture index with SEGMENT and a caption on every other row (not
    the evil one's)."""
    index = load_index(web_index_dir)
    meta = copy.deepcopy(index.meta)
    for row, video in enumerate(meta['videos']):
        if row % 2 and video['path'] != EVIL_VIDEO_NAME:
            video.update(start=SEGMENT[0], end=SEGMENT[1],
                         caption=f'segment {SEGMENT[0]}-{SEGMENT[1]} s')
    out = tmp_path_factory.mktemp('browser') / 'segmented_index'
    save_index(out, index.embeddings, meta)
    return out


@pytest.fixture(scope='module')
def server(served_index):
    """The server's base URL, uvicorn serving ``create_app(served_index)``
    in a thread."""
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    app = create_app(served_index)
    server = uvicorn.Server(uvicorn.Config(app, log_level='warning'))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive(), 'uvicorn stopped before serving'
        assert time.monotonic() < deadline, 'uvicorn did not start'
        time.sleep(0.05)
    yield f'http://127.0.0.1:{port}'
    server.should_exit = True
    thread.join(30)
    sock.close()


@pytest.fixture(scope='module')
def browser():
    assert Path(CHROMIUM).is_file(), (
        f'no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run '
        'does), or set CHROMIUM to its executable')
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM,
                                             args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Page:
    """A fresh page (own context) on the server, recording dialogs,
    uncaught script errors and requests to /api/search."""

    def __init__(self, browser, server):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.add_init_script(INIT_SCRIPT)
        self.page = self.context.new_page()
        self.dialogs, self.errors, self.searches = [], [], []
        self.page.on('dialog', self._dialog)
        self.page.on('pageerror', lambda err: self.errors.append(str(err)))
        self.page.on('request', lambda request: self.searches.append(
            request.url) if '/api/search' in request.url else None)
        self.page.goto(server + '/')

    def _dialog(self, dialog):
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def search(self, query: str, k: int | None = None) -> str:
        """Type ``query`` (and ``k``), press Search; the status line once the
        answer is shown."""
        self.page.locator('#query').fill('')
        self.page.locator('#query').press_sequentially(query)
        if k is not None:
            self.page.locator('#k').fill(str(k))
        self.page.locator('button[type=submit]').click()
        self.page.wait_for_function(
            "() => !document.getElementById('status').textContent"
            ".startsWith('searching')")
        return self.page.locator('#status').text_content()

    def assert_clean(self):
        """No dialog, no uncaught script error, no CSP violation."""
        assert self.dialogs == []
        assert self.errors == []
        assert self.page.evaluate('window.__violations') == []


@pytest.fixture
def page(browser, server):
    page = Page(browser, server)
    yield page
    page.context.close()


def api_results(server: str, query: str, k: int) -> list[dict]:
    response = httpx.get(server + '/api/search', params=dict(q=query, k=k),
                         timeout=60)
    assert response.status_code == 200, response.text
    return response.json()['results']


def shown_results(page: Page) -> list[dict]:
    """What the result list shows: each item's image source, scores and
    path as text."""
    return page.page.evaluate("""() => Array.from(
        document.querySelectorAll('#results li'), li => ({
          img: li.querySelector('img').getAttribute('src'),
          scores: Array.from(li.querySelectorAll('.score'),
                             s => s.textContent),
          path: li.querySelector('.path').textContent}))""")


def wait_until_loaded(page: Page, img) -> dict:
    """Scroll a (lazily loaded) result image into view and wait until it
    has loaded or failed; its natural size."""
    img.scroll_into_view_if_needed()
    img.evaluate("""img => img.complete ? null : new Promise(done => {
        img.addEventListener('load', done);
        img.addEventListener('error', done); })""")
    return img.evaluate(
        'img => ({width: img.naturalWidth, height: img.naturalHeight})')


def test_query_shows_the_api_ranking_as_loaded_frame_strips(page, server):
    status = page.search(QUERY, k=8)
    assert status == '8 results'
    expected = api_results(server, QUERY, 8)
    assert len(expected) == 8
    formatted = page.page.evaluate(
        'scores => scores.map(s => Number(s).toFixed(4))',
        [r['score'] for r in expected])
    assert shown_results(page) == [
        dict(img=f'/api/thumb/{r["id"]}', scores=[score], path=r['path'])
        for r, score in zip(expected, formatted)]
    images = page.page.locator('#results li img')
    assert images.count() == 8
    for i in range(8):
        assert wait_until_loaded(page, images.nth(i)) == dict(
            width=STRIP_FRAMES * STRIP_HEIGHT, height=STRIP_HEIGHT), i
    assert page.searches == [
        f'{server}/api/search?q={QUERY.replace(" ", "+")}&k=8']
    page.assert_clean()


def play(page: Page, row: int) -> dict:
    """Click the result of index row ``row`` and wait until its video
    plays: its frames decoded (``readyState >= 2``), and its clock past
    where playback began by 0.2 s while not paused. The player's state
    then, and ``began``."""
    page.page.locator(f'#results li:has(img[src="/api/thumb/{row}"])') \
        .click()
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while True:
        state = page.page.evaluate(PLAYER_STATE)
        assert state['error'] is None, state
        playing = [t for src, t in page.page.evaluate('window.__playing')
                   if src == state['src']]
        moved = playing and any(
            src == state['src'] and not paused and t > playing[0] + 0.2
            for src, t, paused in page.page.evaluate('window.__progress'))
        if state['readyState'] >= 2 and moved:
            return dict(state, began=playing[0])
        assert time.monotonic() < deadline, f'not playing: {state}'
        time.sleep(0.05)


def shown_frame(page: Page, at: float) -> np.ndarray:
    """The player paused at ``at`` seconds: the frame it shows, as RGB."""
    page.page.evaluate("""at => new Promise(done => {
        const v = document.getElementById('player');
        v.pause();
        v.addEventListener('seeked', done, {once: true});
        v.currentTime = at; })""", at)
    pixels = page.page.evaluate("""() => {
        const v = document.getElementById('player');
        const canvas = document.createElement('canvas');
        canvas.width = v.videoWidth; canvas.height = v.videoHeight;
        const context = canvas.getContext('2d');
        context.drawImage(v, 0, 0);
        return Array.from(context.getImageData(
            0, 0, canvas.width, canvas.height).data); }""")
    state = page.page.evaluate(PLAYER_STATE)
    height = len(pixels) // 4 // state['videoWidth']
    return np.array(pixels, np.uint8).reshape(
        height, state['videoWidth'], 4)[..., :3]


def decoded_frame(path: Path, at: float) -> np.ndarray:
    """The clip's frame showing at ``at`` seconds, decoded by PyAV."""
    import av

    with av.open(str(path)) as container:
        last = None
        for frame in container.decode(video=0):
            if frame.time > at:
                break
            last = frame
        return last.to_ndarray(format='rgb24')


def test_clicked_results_play_from_their_segment(page, server,
                                                 served_index):
    """An unsegmented row plays from 0, a segmented one from its start and
    stops at its end; the player shows the clip's frames."""
    index = load_index(served_index)
    page.search(QUERY, k=WEB_INDEX_CLIPS + 1)
    whole, segmented = 0, 1
    assert 'start' not in index.videos[whole]
    assert (index.videos[segmented]['start'],
            index.videos[segmented]['end']) == SEGMENT

    state = play(page, whole)
    assert state['src'] == f'{server}/video/{whole}'
    assert state['began'] == pytest.approx(0, abs=0.05)
    assert state['videoWidth'] == 32
    assert page.page.locator('#now-playing').text_content() == \
        index.videos[whole]['path']

    state = play(page, segmented)
    assert state['src'] == \
        f'{server}/video/{segmented}#t={SEGMENT[0]},{SEGMENT[1]}'
    assert state['began'] == pytest.approx(SEGMENT[0], abs=0.05)
    page.page.wait_for_function(
        "() => document.getElementById('player').paused")
    assert page.page.evaluate(PLAYER_STATE)['currentTime'] == \
        pytest.approx(SEGMENT[1], abs=0.15)

    # The middle of frame 10: the browser shows what PyAV decodes there, up
    # to YUV to RGB rounding (seen: 3 at most, where frames 9 and 11 differ
    # by 35 and 41), so frames are decoded and shown, not only timed.
    video = Path(index.meta['video_dir']) / index.videos[segmented]['path']
    shown = shown_frame(page, 1.05).astype(int)
    decoded = decoded_frame(video, 1.05).astype(int)
    assert shown.shape == decoded.shape == (32, 32, 3)
    assert np.abs(shown - decoded).max() <= 12
    assert shown.max() - shown.min() > 100  # a bright shape on a dark ground

    page.assert_clean()


def test_screenshot_of_the_page(page, tmp_path):
    """The top results, the first playing (paused at 1.05 s for a
    reproducible picture), as a PNG of the viewport: the README's picture
    with MMCLIP4CLIP_SCREENSHOT=docs/images/search_page.png."""
    page.search(QUERY, k=6)
    first = int(page.page.locator('#results li img').first
                .get_attribute('src').rsplit('/', 1)[1])
    play(page, first)
    shown_frame(page, 1.05)
    page.page.mouse.move(0, 0)  # no result hovered: only the one playing
    page.page.evaluate('window.scrollTo(0, 0)')
    out = SCREENSHOT or tmp_path / 'search_page.png'
    out.parent.mkdir(parents=True, exist_ok=True)
    page.page.screenshot(path=str(out))
    data = out.read_bytes()
    assert data.startswith(b'\x89PNG\r\n\x1a\n')
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (VIEWPORT['width'], VIEWPORT['height'])
    page.assert_clean()


def test_refused_queries_show_why(page):
    """A blank query or one of unknown words: the server's reason in the
    status line; an empty one is stopped by the form itself (no request);
    an over-long one cannot be typed, and what the model ignores of it is
    said; an answer clears the error."""
    status = page.page.locator('#status')
    assert page.search('   ') == \
        'error: the query is empty: type some words to search for'
    assert 'error' in status.get_attribute('class')
    assert page.search('zebra giraffe').startswith(
        'error: the tokenizer knows none of the words')
    assert page.page.locator('#results li').count() == 0
    searches = len(page.searches)
    page.page.locator('#query').fill('')
    page.page.locator('button[type=submit]').click()
    assert page.page.locator('#query').evaluate(
        'q => q.validity.valueMissing')
    assert len(page.searches) == searches
    # Typing stops at the server's 500 characters (the input's maxlength);
    # the page says the model reads only the first words.
    answer = page.search('a ' * 260)
    assert page.page.locator('#query').input_value() == 'a ' * 250
    assert answer.startswith('10 results \u2014 query ')
    assert 'tokens long and the model reads the first' in answer
    assert 'error' not in status.get_attribute('class')
    page.assert_clean()


def test_hostile_file_name_is_shown_as_text(page, server):
    assert page.search(QUERY, k=WEB_INDEX_CLIPS + 1) == \
        f'{WEB_INDEX_CLIPS + 1} results'
    items = page.page.locator('#results li')
    evil = items.filter(has_text=EVIL_VIDEO_NAME)
    assert evil.count() == 1
    assert evil.locator('.path').text_content() == EVIL_VIDEO_NAME
    # One image per result, each a thumbnail: none made from the name.
    sources = page.page.evaluate(
        "() => Array.from(document.images, i => i.getAttribute('src'))")
    assert len(sources) == WEB_INDEX_CLIPS + 1
    assert all(s.startswith('/api/thumb/') for s in sources)
    assert page.page.locator('[onerror]').count() == 0
    evil.click()
    page.page.wait_for_function(
        "() => document.getElementById('player').readyState >= 2")
    assert page.page.locator('#now-playing').text_content() == \
        EVIL_VIDEO_NAME
    wait_until_loaded(page, evil.locator('img'))
    page.assert_clean()
