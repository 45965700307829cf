"""Search a video index in a browser.

    python tools/search_server.py INDEX [--host 127.0.0.1] [--port 8000]
        [--config CONFIG] [--checkpoint CKPT] [--device cpu]
        [--engine {exact,faiss} [--ef-search 128]] [--max-waiting 8]
        [--log-level info]
        [--rerank-config TIGHT_CONFIG --rerank-checkpoint CKPT --rerank-topk 50]

Serves a search page at http://HOST:PORT/ and its JSON API at
/api/search?q=...&k=... (the app is ``mmclip4clip.apis.web.create_app``,
which describes the routes and what it refuses). Needs the ``web`` extra:
``pip install -e ".[web]"``. It listens on 127.0.0.1 (this machine only)
unless --host says otherwise. With a tightTransf model the loose top
--rerank-topk hits of each query are re-ordered by its pair logits, as
tools/search.py does. A malformed index, config or checkpoint ends
with a one-line error and exit status 1 before anything listens.
"""
import argparse
import sys

from mmclip4clip.utils.cli import (
    add_search_options,
    at_least,
    check_search_options,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Serve a search page for a video index')
    parser.add_argument('index', help='index directory')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default: this machine '
                        'only; 0.0.0.0 exposes the index\'s videos to the '
                        'network)')
    parser.add_argument('--port', type=at_least(1), default=8000)
    parser.add_argument('--allowed-host', action='append', default=[],
                        metavar='NAME',
                        help='a Host name clients use to reach the server '
                        '(repeatable); default: the loopback names and '
                        '--host, or any name when --host is a wildcard '
                        'address')
    add_search_options(parser)
    parser.add_argument('--max-waiting', type=at_least(0), default=8,
                        help='queries that may wait while one is encoded; '
                        'more are answered 503')
    parser.add_argument('--log-level', default='info',
                        choices=('critical', 'error', 'warning', 'info',
                                 'debug'),
                        help='the server log\'s level; info logs one line '
                        'per request, warning only problems')
    args = parser.parse_args()
    check_search_options(parser, args)
    return args


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """The Host names to answer: loopback's, ``host`` and ``extra``; any
    (``*``) for a wildcard ``host`` unless ``extra`` names them."""
    from mmclip4clip.apis.web import LOOPBACK_HOSTS

    if host in ('0.0.0.0', '::', '') and not extra:
        return ['*']
    named = f'[{host}]' if ':' in host else host
    return list(dict.fromkeys([*LOOPBACK_HOSTS, named, *extra]))


def main() -> int:
    args = parse_args()
    try:
        import fastapi  # noqa: F401  (create_app imports it when called)
        import uvicorn

        from mmclip4clip.apis.web import create_app
    except ImportError as err:
        print(f'error: {err}; the server needs pip install -e ".[web]"',
              file=sys.stderr)
        return 1
    try:
        app = create_app(args.index, args.config, args.checkpoint,
                         args.device, args.engine, args.max_waiting,
                         args.rerank_config, args.rerank_checkpoint,
                         args.rerank_topk,
                         allowed_hosts(args.host, args.allowed_host),
                         args.ef_search)
    except (ValueError, OSError, ImportError) as err:
        print('error: ' + ' '.join(str(err).splitlines()), file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == '__main__':
    sys.exit(main())
