"""The search page's server (mmclip4clip.apis.web, tools/search_server.py)
on a small index of synthetic clips with a fixed untrained model: its JSON
equals search_index's ranking exactly, it serves only the files the index
lists (by row), never puts data into HTML, and refuses oversized queries."""
import contextlib
import copy
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import torch
from mmengine.config import Config

pytest.importorskip('fastapi')
pytest.importorskip('httpx')

from fastapi.testclient import TestClient  # noqa: E402
from helpers import (  # noqa: E402
    EVIL_VIDEO_NAME,
    REPO,
    SYNTHETIC_CONFIG,
    WEB_INDEX_CLIPS,
    free_port,
)

from mmclip4clip.apis import (  # noqa: E402
    init_retriever,
    load_index,
    rerank_with_tight,
    search_index,
)
from mmclip4clip.apis.index import save_index  # noqa: E402
from mmclip4clip.apis.web import (  # noqa: E402
    MAX_K,
    MAX_QUERY_CHARS,
    STRIP_FRAMES,
    STRIP_HEIGHT,
    create_app,
)


@pytest.fixture(scope='module')
def client(web_index_dir):
    with TestClient(create_app(web_index_dir),
                    base_url='http://127.0.0.1') as test_client:
        yield test_client


def captions(workspace: Path) -> list[str]:
    ann = json.loads(
        (workspace / 'data/synthetic/annotations/test.json').read_text())
    return [c for rec in ann for c in rec['captions']][::15]  # 12


def test_search_json_is_search_index_ranking(web_workspace, web_model_cfg,
                                             web_index_dir, client):
    """Same videos, same order, same scores (bit for bit) as search_index
    with a separately loaded model; rows point at the listed videos."""
    model, cfg = web_model_cfg
    index = load_index(web_index_dir)
    for caption in captions(web_workspace):
        expected = search_index(model, cfg, index, caption, 5)
        response = client.get('/api/search', params=dict(q=caption, k=5))
        assert response.status_code == 200, response.text
        data = response.json()
        assert data['query'] == caption and data['k'] == 5
        results = data['results']
        assert [(r['path'], r['score']) for r in results] == [
            (h['path'], h['score']) for h in expected]
        assert [r['rank'] for r in results] == [1, 2, 3, 4, 5]
        for r in results:
            assert index.videos[r['id']]['path'] == r['path']
            assert r['duration'] == index.videos[r['id']]['duration']
    everything = client.get('/api/search', params=dict(q=caption, k=MAX_K))
    assert len(everything.json()['results']) == WEB_INDEX_CLIPS + 1


def test_tight_rerank_equals_rerank_with_tight(web_workspace, web_model_cfg,
                                              web_index_dir, tmp_path):
    """With a tightTransf model: the loose top max(rerank_topk, k)
    re-ordered by its logits, exactly as rerank_with_tight orders them."""
    model, cfg = web_model_cfg
    tight_cfg = Config.fromfile(str(SYNTHETIC_CONFIG))
    tight_cfg.model.head = dict(type='TightTransfHead', embed_dim=64,
                                num_layers=1, num_heads=2, max_positions=32)
    torch.manual_seed(0)
    tight = init_retriever(tight_cfg)
    with torch.no_grad():  # a random head far from uniform attention
        tight.head.position_embeddings.weight.normal_()
    ckpt = tmp_path / 'tight.pth'
    torch.save(dict(state_dict=tight.state_dict()), ckpt)
    tight_path = tmp_path / 'tight_config.py'
    tight_cfg.dump(str(tight_path))
    query = 'a red square moves left along the top'
    index = load_index(web_index_dir)
    expected = rerank_with_tight(
        search_index(model, cfg, index, query, 6), tight, tight_cfg,
        index.meta['video_dir'], query)[:4]
    app = create_app(web_index_dir, rerank_config=str(tight_path),
                     rerank_checkpoint=str(ckpt), rerank_topk=6)
    with TestClient(app, base_url='http://localhost') as rerank_client:
        response = rerank_client.get('/api/search', params=dict(q=query, k=4))
    assert response.status_code == 200, response.text
    results = response.json()['results']
    assert [(r['path'], r['score'], r['tight_score']) for r in results] == [
        (h['path'], h['score'], h['tight_score']) for h in expected]
    assert [r['tight_score'] for r in results] == sorted(
        (r['tight_score'] for r in results), reverse=True)
    with pytest.raises(ValueError, match='go together'):
        create_app(web_index_dir, rerank_config=str(tight_path))


def test_segments_and_captions_are_passed_through(web_index_dir, tmp_path):
    """An index record with a segment and a caption: the result carries
    them (the page plays from ``start``); malformed ones are left out."""
    index = load_index(web_index_dir)
    meta = copy.deepcopy(index.meta)
    for video in meta['videos']:
        video.update(start=0.5, end=1.5, caption='<b>x</b> & y')
    meta['videos'][0].update(start='0', end=True, caption=7)
    meta['videos'][1].update(start=1.5, end=0.5)
    segmented = tmp_path / 'segmented_index'
    save_index(segmented, index.embeddings, meta)
    with TestClient(create_app(segmented),
                    base_url='http://127.0.0.1:8000') as segment_client:
        results = segment_client.get(
            '/api/search', params=dict(q='a red square', k=MAX_K)).json()[
                'results']
    for result in results:
        if result['id'] == 0:
            assert not {'start', 'end', 'caption'} & set(result)
        elif result['id'] == 1:
            assert 'start' not in result and 'end' not in result
        else:
            assert (result['start'], result['end'], result['caption']) == (
                0.5, 1.5, '<b>x</b> & y')


def test_faiss_engine_equals_search_index(web_model_cfg, web_index_dir, tmp_path):
    pytest.importorskip('faiss')
    model, cfg = web_model_cfg
    copied = tmp_path / 'faiss_index'
    shutil.copytree(web_index_dir, copied)
    app = create_app(copied, engine='faiss')
    assert list(copied.glob('faiss-*.index'))  # built at start
    expected = search_index(model, cfg, load_index(copied), 'a red square',
                            5, 'faiss', copied)
    # The graph is held from the start: no query builds or reads it.
    with TestClient(app, base_url='http://127.0.0.1') as faiss_client, \
            mock.patch('mmclip4clip.apis.index.faiss_graph',
                       side_effect=AssertionError('graph read per query')):
        results = faiss_client.get(
            '/api/search', params=dict(q='a red square', k=5)).json()[
                'results']
    assert [(r['path'], r['score']) for r in results] == [
        (h['path'], h['score']) for h in expected]
    with pytest.raises(ValueError, match='unknown engine'):
        create_app(copied, engine='annoy')
    deeper = create_app(copied, engine='faiss', ef_search=300)
    assert deeper.state.searcher.graph.hnsw.efSearch == 300
    with pytest.raises(ValueError, match='engine faiss only'):
        create_app(copied, ef_search=300)


def test_unknown_words_come_back_as_warnings(client):
    data = client.get('/api/search',
                      params=dict(q='a red zebra moves left')).json()
    assert len(data['results']) == 10
    assert len(data['warnings']) == 1 and "'zebra'" in data['warnings'][0]


@pytest.mark.parametrize('params, status, message', [
    (dict(q=''), 400, 'the query is empty'),
    (dict(q='   '), 400, 'the query is empty'),
    (dict(q='zebra giraffe'), 400, 'the tokenizer knows none of the words'),
    (dict(q='a ' * MAX_QUERY_CHARS), 400,
     f'at most {MAX_QUERY_CHARS} are accepted'),
    (dict(q='a red square', k=0), 400, f'k must be between 1 and {MAX_K}'),
    (dict(q='a red square', k=MAX_K + 1), 400,
     f'k must be between 1 and {MAX_K}'),
    (dict(q='a red square', k=-3), 400, f'k must be between 1 and {MAX_K}'),
    (dict(q='a red square', k='ten'), 400, 'k must be an integer'),
    (dict(q='a red square', k='9' * 40), 400, 'k must be an integer'),
])
def test_refused_queries_say_why(client, params, status, message):
    response = client.get('/api/search', params=params)
    assert response.status_code == status
    assert message in response.json()['error']


def test_unexpected_failure_is_json_500(client, monkeypatch):
    def broken(query, k):
        raise RuntimeError('out of memory')

    monkeypatch.setattr(client.app.state.searcher, '_ranking', broken)
    response = client.get('/api/search', params=dict(q='a red square'))
    assert response.status_code == 500
    assert response.json()['error'] == \
        'the search failed: RuntimeError: out of memory'


def test_busy_server_answers_503(client):
    """Once every admission slot is taken (queries waiting for the encode),
    the next query is refused at once, saying why."""
    admitted = client.app.state.searcher._admitted
    taken = 0
    while admitted.acquire(blocking=False):
        taken += 1
    try:
        assert taken == 9  # one encoding + max_waiting (8) waiting
        response = client.get('/api/search', params=dict(q='a red square'))
        assert response.status_code == 503
        assert 'busy' in response.json()['error']
    finally:
        for _ in range(taken):
            admitted.release()
    assert client.get('/api/search',
                      params=dict(q='a red square')).status_code == 200


def test_hostile_file_name_is_plain_json_and_never_in_the_page(client):
    data = client.get('/api/search',
                      params=dict(q='a red square', k=MAX_K)).json()
    assert EVIL_VIDEO_NAME in [r['path'] for r in data['results']]
    page = client.get('/')
    assert page.status_code == 200
    assert page.headers['content-type'].startswith('text/html')
    script = client.get('/static/app.js')
    assert script.status_code == 200
    assert client.get('/static/app.css').status_code == 200
    for source in (page.text, script.text):
        assert 'onerror' not in source and '<img src=x' not in source
        for sink in ('innerHTML', 'outerHTML', 'insertAdjacentHTML',
                     'document.write', 'eval('):
            assert sink not in source
    assert '<script>' not in page.text  # no inline script: the CSP allows
    assert 'textContent' in script.text  # only /static/app.js


def test_other_host_names_are_refused(client):
    """A page whose domain is rebound to 127.0.0.1 sends its own Host: 400,
    so it cannot read results or videos (DNS rebinding)."""
    for url in ('/', '/api/search?q=a+red+square', '/video/0'):
        response = client.get(url, headers={'Host': 'evil.example:8000'})
        assert response.status_code == 400, url
        assert response.headers['x-content-type-options'] == 'nosniff'
    for host in ('localhost:8000', '127.0.0.1', '[::1]:8000'):
        assert client.get('/', headers={'Host': host}).status_code == 200


def test_tool_allowed_hosts(load_tool):
    tool = load_tool('tools/search_server.py')
    assert tool.allowed_hosts('127.0.0.1', []) == [
        '127.0.0.1', 'localhost', '[::1]']
    assert tool.allowed_hosts('0.0.0.0', []) == ['*']
    assert tool.allowed_hosts('0.0.0.0', ['box.lan']) == [
        '127.0.0.1', 'localhost', '[::1]', '0.0.0.0', 'box.lan']
    assert tool.allowed_hosts('::1', []) == ['127.0.0.1', 'localhost',
                                             '[::1]']
    assert tool.allowed_hosts('192.168.1.5', []) == [
        '127.0.0.1', 'localhost', '[::1]', '192.168.1.5']


def test_security_headers_on_every_response(client):
    for path in ('/', '/static/app.js', '/api/search?q=', '/video/0',
                 '/video/999999', '/nowhere'):
        headers = client.get(path).headers
        assert headers['x-content-type-options'] == 'nosniff', path
        csp = headers['content-security-policy']
        assert "script-src 'self'" in csp and "default-src 'none'" in csp


def test_video_is_served_by_row_with_byte_ranges(web_index_dir, client):
    index = load_index(web_index_dir)
    for row in (0, index.videos.index(next(
            v for v in index.videos if v['path'] == EVIL_VIDEO_NAME))):
        path = Path(index.meta['video_dir']) / index.videos[row]['path']
        data = path.read_bytes()
        whole = client.get(f'/video/{row}')
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers['accept-ranges'] == 'bytes'
        part = client.get(f'/video/{row}', headers={'Range': 'bytes=0-99'})
        assert part.status_code == 206
        assert part.content == data[:100]
        assert part.headers['content-range'] == f'bytes 0-99/{len(data)}'
        tail = client.get(f'/video/{row}', headers={'Range': 'bytes=-10'})
        assert tail.status_code == 206 and tail.content == data[-10:]


@pytest.mark.parametrize('url', [
    '/video/../../etc/passwd', '/video/..%2F..%2Fetc%2Fpasswd',
    '/video/%2e%2e', '/video/-1', '/video/999999', '/video/1.0',
    '/video/0x1', '/video/', '/video/%00', '/video/%C2%B9',
    '/video/' + '1' * 40, '/api/thumb/-1', '/api/thumb/999999',
    '/api/thumb/..%2Findex.json', '/static/../index.json',
    '/static/app.js/../../web.py', '/index.json',
])
def test_anything_but_a_listed_row_is_404(client, url):
    assert client.get(url).status_code == 404


def test_symlink_swapped_in_outside_the_folder_is_404(web_index_dir, client,
                                                      tmp_path):
    """A listed file replaced by a symlink to a file outside the video
    folder is refused; one to a file inside it is served."""
    index = load_index(web_index_dir)
    video_dir = Path(index.meta['video_dir'])
    listed = video_dir / index.videos[1]['path']
    original = tmp_path / 'original.mp4'
    shutil.move(listed, original)
    secret = tmp_path / 'secret.txt'
    secret.write_text('not for the browser')
    try:
        listed.symlink_to(secret)
        assert client.get('/video/1').status_code == 404
        assert client.get('/api/thumb/1').status_code == 404
        listed.unlink()
        listed.symlink_to(video_dir / index.videos[0]['path'])
        assert client.get('/video/1').content == \
            (video_dir / index.videos[0]['path']).read_bytes()
        listed.unlink()
        assert client.get('/video/1').status_code == 404  # gone
    finally:
        if listed.is_symlink():
            listed.unlink()
        shutil.move(original, listed)
    assert client.get('/video/1').status_code == 200


def test_thumbnail_is_a_strip_of_frames(client):
    from PIL import Image

    response = client.get('/api/thumb/0')
    assert response.status_code == 200
    assert response.headers['content-type'] == 'image/jpeg'
    image = Image.open(io.BytesIO(response.content))
    # The synthetic clips are square.
    assert image.size == (STRIP_FRAMES * STRIP_HEIGHT, STRIP_HEIGHT)


@contextlib.contextmanager
def running_server(workspace: Path, index_dir: Path,
                   *options: str) -> Iterator[tuple[str, Callable[[], str]]]:
    """tools/search_server.py on a free port, answering; yields its URL and
    a function reading its log so far, and terminates it afterwards.

    Its log goes to a file: uvicorn logs a line per request, and a pipe
    nobody reads fills at 64 KB (about 650 requests), after which the
    server blocks on its next log line and every client times out."""
    import httpx

    port = free_port()
    url = f'http://127.0.0.1:{port}'
    with tempfile.TemporaryDirectory() as log_dir:
        log_path = Path(log_dir) / 'server.log'
        with open(log_path, 'w') as log:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / 'tools/search_server.py'),
                 str(index_dir), '--port', str(port), *options],
                cwd=workspace, stdout=log, stderr=subprocess.STDOUT,
                text=True)

        def read_log() -> str:
            return log_path.read_text()

        def log_tail() -> str:
            return read_log()[-3000:]

        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_tail()
                try:
                    httpx.get(url + '/', timeout=30)
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, \
                        'server did not start: ' + log_tail()
                    time.sleep(0.5)
            yield url, read_log
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError('the server did not stop on SIGTERM: '
                                     + log_tail()) from None


def load_test(url: str, clients: int, seconds: float) -> tuple[int, dict]:
    """tools/analysis_tools/load_test_search_server.py: exit status and its
    JSON report."""
    proc = subprocess.run(
        [sys.executable,
         str(REPO / 'tools/analysis_tools/load_test_search_server.py'),
         '--url', url, '--clients', str(clients), '--seconds', str(seconds),
         '--query', 'a red square'],
        capture_output=True, text=True, timeout=120)
    assert proc.stdout.count('\n') == 1, proc.stdout + proc.stderr[-3000:]
    return proc.returncode, json.loads(proc.stdout)


def test_server_tool_answers_over_http_and_under_load(web_workspace,
                                                      web_index_dir):
    """tools/search_server.py on a free port: /api/search over real HTTP;
    the loopback load test (4 concurrent clients for 2 s) gets every
    answer, with latency percentiles; a server that lets no query wait
    answers the same clients 503 (and nothing else: no hung request), which
    the load test counts as errors and fails on."""
    import httpx

    with running_server(web_workspace, web_index_dir) as (url, read_log):
        response = httpx.get(url + '/api/search',
                             params=dict(q='a red square', k=3), timeout=30)
        assert response.status_code == 200
        results = response.json()['results']
        assert [r['rank'] for r in results] == [1, 2, 3]
        assert response.headers['x-content-type-options'] == 'nosniff'
        status, report = load_test(url, clients=4, seconds=2)
        assert status == 0 and report['errors'] == {}, report
        assert report['clients'] == 4 and report['requests'] >= 4
        assert 0 < report['p50_ms'] <= report['p90_ms'] <= \
            report['p99_ms'] <= report['max_ms']
        # The default log level logs each request.
        assert read_log().count('GET /api/search') > report['requests']
    with running_server(web_workspace, web_index_dir, '--max-waiting', '0',
                        '--log-level', 'warning') as (url, read_log):
        status, report = load_test(url, clients=4, seconds=2)
        assert status == 1, report
        assert set(report['errors']) == {'HTTP 503'}, report
        assert report['requests'] > report['errors']['HTTP 503'] > 0
        assert 'GET /api/search' not in read_log()


def test_server_tool_refuses_a_missing_index(web_workspace, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools/search_server.py'),
         str(tmp_path / 'nothing'), '--port', str(free_port())],
        cwd=web_workspace, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'no index.json' in last


@pytest.mark.parametrize('options, message', [
    (['--ef-search', '64'], '--ef-search applies to --engine faiss only'),
    (['--rerank-config', 'tight.py'],
     '--rerank-config and --rerank-checkpoint go together'),
    (['--log-level', 'loud'], "invalid choice: 'loud'"),
])
def test_tool_refuses_options_that_cannot_work(load_tool, monkeypatch,
                                               capsys, options, message):
    tool = load_tool('tools/search_server.py')
    monkeypatch.setattr('sys.argv', ['search_server.py', 'INDEX', *options])
    with pytest.raises(SystemExit) as stop:
        tool.parse_args()
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_tool_takes_ef_search_with_faiss(load_tool, monkeypatch):
    tool = load_tool('tools/search_server.py')
    monkeypatch.setattr('sys.argv', ['search_server.py', 'INDEX', '--engine',
                                     'faiss', '--ef-search', '64'])
    args = tool.parse_args()
    assert (args.ef_search, args.log_level) == (64, 'info')
