"""Loopback load test of a running search server (tools/search_server.py;
needs httpx, which the tests extra installs).

    python tools/analysis_tools/load_test_search_server.py \\
        [--url http://127.0.0.1:8000] [--clients 8] [--seconds 10] [--k 10] \\
        [--query "a red square moves left"]

N clients (threads, one HTTP connection each) send /api/search queries back
to back for a bounded time; prints one JSON line: requests, errors (any
answer but 200, or a failed connection, by kind), requests per second and
the latency percentiles p50 / p90 / p99 / max in milliseconds. Exits 1 when
any request failed, so a script can require zero errors.
"""
import argparse
import json
import sys
import threading
import time
from collections import Counter

import httpx
import numpy as np

from mmclip4clip.utils.cli import at_least


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Load-test a search server over loopback')
    parser.add_argument('--url', default='http://127.0.0.1:8000')
    parser.add_argument('--clients', type=at_least(1), default=8)
    parser.add_argument('--seconds', type=float, default=10.0)
    parser.add_argument('--k', type=at_least(1), default=10)
    parser.add_argument('--query', default='a red square moves left')
    return parser.parse_args()


def client_loop(url: str, params: dict, stop_at: float,
                latencies: list[float], errors: Counter,
                lock: threading.Lock) -> None:
    """Query until ``stop_at`` (monotonic seconds), recording each answer's
    latency (200) or its error kind."""
    mine, failed = [], Counter()
    with httpx.Client(base_url=url, timeout=60) as http:
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            try:
                response = http.get('/api/search', params=params)
            except httpx.HTTPError as err:
                failed[type(err).__name__] += 1
                continue
            elapsed = time.perf_counter() - start
            if response.status_code == 200:
                mine.append(elapsed)
            else:
                failed[f'HTTP {response.status_code}'] += 1
    with lock:
        latencies.extend(mine)
        errors.update(failed)


def main() -> int:
    args = parse_args()
    params = dict(q=args.query, k=args.k)
    # One query first: the server answers, and the query is valid.
    first = httpx.get(args.url + '/api/search', params=params, timeout=60)
    if first.status_code != 200:
        print(f'error: {args.url} answered {first.status_code}: '
              f'{first.text[:200]}', file=sys.stderr)
        return 1
    latencies: list[float] = []
    errors: Counter = Counter()
    lock = threading.Lock()
    began = time.monotonic()
    stop_at = began + args.seconds
    threads = [threading.Thread(target=client_loop,
                                args=(args.url, params, stop_at, latencies,
                                      errors, lock))
               for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began
    ms = np.array(latencies) * 1000
    report = dict(clients=args.clients, seconds=round(wall, 2),
                  requests=len(ms) + sum(errors.values()),
                  errors=dict(errors),
                  requests_per_s=round(len(ms) / wall, 1))
    if len(ms):
        report.update({f'p{q}_ms': round(float(np.percentile(ms, q)), 1)
                       for q in (50, 90, 99)},
                      max_ms=round(float(ms.max()), 1))
    print(json.dumps(report))
    return 1 if errors else 0


if __name__ == '__main__':
    sys.exit(main())
