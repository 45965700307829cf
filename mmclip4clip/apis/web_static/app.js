// The search page's script: queries /api/search and builds the result list
// with DOM nodes and textContent only, so no path, caption or query is ever
// parsed as HTML.
'use strict';

function setStatus(text, isError) {
  const status = document.getElementById('status');
  status.textContent = text;
  status.classList.toggle('error', Boolean(isError));
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function play(result, item) {
  // Only a numeric row id ever goes into a URL.
  if (!Number.isInteger(result.id) || result.id < 0) return;
  let src = '/video/' + result.id;
  if (Number.isFinite(result.start) && Number.isFinite(result.end)) {
    src += '#t=' + result.start + ',' + result.end;
  }
  const player = document.getElementById('player');
  document.getElementById('player-box').hidden = false;
  document.getElementById('now-playing').textContent = result.path;
  for (const other of document.querySelectorAll('#results li.selected')) {
    other.classList.remove('selected');
  }
  item.classList.add('selected');
  player.src = src;
  player.play().catch(() => {});  // autoplay may be refused; controls stay
}

function showResults(results) {
  const list = document.getElementById('results');
  list.replaceChildren();
  for (const result of results) {
    if (!Number.isInteger(result.id) || result.id < 0) continue;
    const item = el('li');
    const img = el('img');
    img.src = '/api/thumb/' + result.id;
    img.alt = 'frames of ' + result.path;
    img.loading = 'lazy';
    item.append(img);
    item.append(el('span', 'score', Number(result.score).toFixed(4)));
    if ('tight_score' in result) {
      const tight = result.tight_score === null ? 'unreadable'
        : Number(result.tight_score).toFixed(4);
      item.append(el('span', 'score', 'tight ' + tight));
    }
    item.append(el('span', 'path', result.path));
    if (typeof result.caption === 'string') {
      item.append(el('div', 'caption', result.caption));
    }
    item.addEventListener('click', () => play(result, item));
    list.append(item);
  }
}

async function search(event) {
  event.preventDefault();
  const query = document.getElementById('query').value;
  const k = document.getElementById('k').value;
  setStatus('searching\u2026', false);
  let response, data;
  try {
    response = await fetch('/api/search?' + new URLSearchParams({q: query, k: k}));
    data = await response.json();
  } catch (err) {
    setStatus('the search failed: ' + err, true);
    return;
  }
  if (!response.ok) {
    setStatus('error: ' + (data.error || response.statusText), true);
    return;
  }
  showResults(data.results);
  const notes = data.warnings.length ? ' \u2014 ' + data.warnings.join('; ') : '';
  setStatus(data.results.length + ' results' + notes, false);
}

document.addEventListener('DOMContentLoaded', () => {
  document.getElementById('search-form').addEventListener('submit', search);
});
