// The kvs-local viewer: it only calls the public API kvs-local serves, signing each call with SigV4 like the SDKs.
'use strict';

const encoder = new TextEncoder();
const hex = (buf) => Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');

async function sha256Hex(text) {
  return hex(await crypto.subtle.digest('SHA-256', encoder.encode(text)));
}

async function hmac(key, text) {
  const k = await crypto.subtle.importKey('raw', key, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  return new Uint8Array(await crypto.subtle.sign('HMAC', k, encoder.encode(text)));
}

const creds = {
  get key() { return localStorage.getItem('kvsKey') || ''; },
  get secret() { return localStorage.getItem('kvsSecret') || ''; },
  get region() { return localStorage.getItem('kvsRegion') || 'us-east-1'; },
};

// Signs a POST of `body` to `path` on this origin (service kinesisvideo, headers host and x-amz-date).
async function signedHeaders(path, body) {
  const now = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');
  const date = now.slice(0, 8);
  const host = location.host;
  const payloadHash = await sha256Hex(body);
  const canonical = ['POST', path, '', `host:${host}`, `x-amz-date:${now}`, '', 'host;x-amz-date', payloadHash].join('\n');
  const scope = `${date}/${creds.region}/kinesisvideo/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', now, scope, await sha256Hex(canonical)].join('\n');
  let key = encoder.encode('AWS4' + creds.secret);
  for (const part of [date, creds.region, 'kinesisvideo', 'aws4_request']) key = await hmac(key, part);
  const signature = hex(await hmac(key, toSign));
  return {
    'content-type': 'application/json',
    'x-amz-date': now,
    authorization: `AWS4-HMAC-SHA256 Credential=${creds.key}/${scope}, SignedHeaders=host;x-amz-date, Signature=${signature}`,
  };
}

async function call(path, input, binary = false) {
  const body = JSON.stringify(input);
  const response = await fetch(path, { method: 'POST', headers: await signedHeaders(path, body), body });
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).Message || message; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${response.headers.get('x-amzn-ErrorType') || response.status}: ${message}`);
  }
  return binary ? response.blob() : response.json();
}

const $ = (id) => document.getElementById(id);
let current = null; // { name, fragments: [...] }
let hls = null;

function showError(e) {
  $('error').textContent = e ? String(e.message || e) : '';
}

async function loadStreams() {
  const list = $('streams');
  const names = [];
  let token;
  do {
    const page = await call('/listStreams', token ? { NextToken: token } : {});
    for (const s of page.StreamInfoList) names.push(s.StreamName);
    token = page.NextToken;
  } while (token);
  list.replaceChildren(...names.map((name) => {
    const li = document.createElement('li');
    li.textContent = name;
    li.dataset.stream = name;
    li.onclick = () => select(name).catch(showError);
    return li;
  }));
  $('status').textContent = `${names.length} stream(s)`;
}

async function listFragments(name) {
  const all = [];
  let token;
  do {
    const page = await call('/listFragments', token ? { StreamName: name, NextToken: token } : { StreamName: name });
    all.push(...page.Fragments);
    token = page.NextToken;
  } while (token);
  // The service returns fragments in no particular order.
  return all.sort((a, b) => a.ProducerTimestamp - b.ProducerTimestamp);
}

function drawTimeline(fragments) {
  const box = $('timeline');
  if (!fragments.length) { box.replaceChildren(); return; }
  const start = fragments[0].ProducerTimestamp;
  const last = fragments[fragments.length - 1];
  const span = Math.max(last.ProducerTimestamp + last.FragmentLengthInMilliseconds / 1000 - start, 1);
  box.replaceChildren(...fragments.map((f) => {
    const d = document.createElement('div');
    d.className = 'fragment';
    d.style.left = `${((f.ProducerTimestamp - start) / span) * 100}%`;
    d.style.width = `${Math.max((f.FragmentLengthInMilliseconds / 1000 / span) * 100, 0.2)}%`;
    d.title = `${f.FragmentNumber}\n${new Date(f.ProducerTimestamp * 1000).toISOString()}\n${f.FragmentSizeInBytes} bytes`;
    return d;
  }));
}

async function select(name) {
  showError(null);
  for (const li of $('streams').children) li.classList.toggle('selected', li.dataset.stream === name);
  $('title').textContent = name;
  const info = (await call('/describeStream', { StreamName: name })).StreamInfo;
  const rows = ['StreamARN', 'MediaType', 'DataRetentionInHours', 'Status', 'CreationTime', 'Version'];
  $('details').replaceChildren(...rows.map((k) => {
    const tr = document.createElement('tr');
    const v = k === 'CreationTime' ? new Date(info[k] * 1000).toISOString() : info[k];
    tr.innerHTML = '<td></td><td></td>';
    tr.children[0].textContent = k;
    tr.children[1].textContent = v ?? '';
    return tr;
  }));
  const fragments = info.DataRetentionInHours > 0 ? await listFragments(name) : [];
  current = { name, fragments };
  $('fragments-summary').textContent = `${fragments.length} fragment(s)`;
  $('fragments-summary').dataset.count = String(fragments.length);
  drawTimeline(fragments);
  $('actions').hidden = false;
}

function range(fragments, maxSeconds) {
  const last = fragments[fragments.length - 1];
  const end = last.ProducerTimestamp + last.FragmentLengthInMilliseconds / 1000;
  const start = Math.max(fragments[0].ProducerTimestamp, end - maxSeconds);
  return { StartTimestamp: start, EndTimestamp: end };
}

async function play(mode) {
  showError(null);
  current.fragments = await listFragments(current.name);
  drawTimeline(current.fragments);
  const input = { StreamName: current.name, PlaybackMode: mode };
  if (mode === 'ON_DEMAND') {
    input.HLSFragmentSelector = { FragmentSelectorType: 'PRODUCER_TIMESTAMP', TimestampRange: range(current.fragments, 3600) };
  }
  const url = (await call('/getHLSStreamingSessionURL', input)).HLSStreamingSessionURL;
  const video = $('video');
  if (hls) hls.destroy();
  hls = new Hls();
  hls.on(Hls.Events.ERROR, (_, data) => {
    if (data.fatal) showError(`playback error: ${data.type} ${data.details}`);
  });
  hls.loadSource(url);
  hls.attachMedia(video);
  video.dataset.mode = mode;
  $('playback-status').textContent = `${mode === 'LIVE' ? 'Live' : 'On demand'}: ${current.name}`;
  await video.play().catch(() => { /* autoplay may wait for the media */ });
}

async function downloadClip() {
  showError(null);
  const selector = { FragmentSelectorType: 'PRODUCER_TIMESTAMP', TimestampRange: range(current.fragments, 3600) };
  const blob = await call('/getClip', { StreamName: current.name, ClipFragmentSelector: selector }, true);
  const a = document.createElement('a');
  a.href = URL.createObjectURL(blob);
  a.download = `${current.name}.mp4`;
  document.body.appendChild(a);
  a.click();
  a.remove();
}

async function thumbnails() {
  showError(null);
  const r = range(current.fragments, 300);
  const interval = Math.max(200, Math.floor(((r.EndTimestamp - r.StartTimestamp) * 1000) / 8));
  const reply = await call('/getImages', {
    StreamName: current.name, ImageSelectorType: 'PRODUCER_TIMESTAMP', StartTimestamp: r.StartTimestamp,
    EndTimestamp: r.EndTimestamp, SamplingInterval: interval, Format: 'JPEG', WidthPixels: 160, HeightPixels: 90,
    MaxResults: 8,
  });
  $('thumbs').replaceChildren(...reply.Images.filter((i) => i.ImageContent).map((i) => {
    const img = document.createElement('img');
    img.src = `data:image/jpeg;base64,${i.ImageContent}`;
    img.title = new Date(i.TimeStamp * 1000).toISOString();
    return img;
  }));
}

$('creds').onsubmit = (e) => {
  e.preventDefault();
  localStorage.setItem('kvsKey', $('key').value.trim());
  localStorage.setItem('kvsSecret', $('secret').value.trim());
  localStorage.setItem('kvsRegion', $('region').value.trim() || 'us-east-1');
  loadStreams().catch(showError);
};
$('live').onclick = () => play('LIVE').catch(showError);
$('ondemand').onclick = () => play('ON_DEMAND').catch(showError);
$('clip').onclick = () => downloadClip().catch(showError);
$('images').onclick = () => thumbnails().catch(showError);

$('key').value = creds.key;
$('region').value = creds.region;
if (creds.key && creds.secret) loadStreams().catch(showError);
