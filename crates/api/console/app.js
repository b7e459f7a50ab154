// The Strongbox console: signs in for a session cookie, then drives the
// same DBCS routes every client uses, sending the CSRF token with changes.
'use strict';

const $ = (sel, root = document) => root.querySelector(sel);
const PREFIX = '/paas/service/dbcs/api/v1.1/instances';
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
let me = null;          // {user, identityDomain, role, csrfToken}
let current = null;     // the selected deployment's detail
let moments = [];       // what the slider picks from (ms since the epoch), or a [from, to] range
let continuous = false; // moments is a range of seconds (archived WAL), not a list of backups

// `23-Jul-2016 23:04:54 UTC` <-> Date (UTC).
function parseApiDate(s) {
  const m = /^(\d{2})-(\w{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2})/.exec(s || '');
  if (!m) return null;
  return new Date(Date.UTC(+m[3], MONTHS.indexOf(m[2]), +m[1], +m[4], +m[5], +m[6]));
}
function apiDate(d) {
  const p = n => String(n).padStart(2, '0');
  return `${p(d.getUTCDate())}-${MONTHS[d.getUTCMonth()]}-${d.getUTCFullYear()} ` +
    `${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}
function age(d) {
  if (!d) return '—';
  const s = Math.max(0, (Date.now() - d.getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} d`;
}
function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function cell(row, text) {
  const td = row.insertCell();
  td.textContent = text;
  return td;
}
function showError(where, e) { $(where).textContent = e ? String(e.message || e) : ''; }

async function api(path, options = {}) {
  const headers = {
    'X-ID-TENANT-NAME': me ? me.identityDomain : '', 'Content-Type': 'application/json', 'X-Strongbox-Console': '1',
  };
  if (me && options.method && options.method !== 'GET') headers['X-CSRF-Token'] = me.csrfToken;
  const resp = await fetch(path, { credentials: 'same-origin', ...options, headers });
  const text = await resp.text();
  let body = {};
  try { body = text ? JSON.parse(text) : {}; } catch { body = { message: text }; }
  if (resp.status === 401 && me) { signedOut(); }
  if (!resp.ok) throw new Error(body.message || `${resp.status} ${resp.statusText}`);
  return { resp, body };
}

function signedIn(who) {
  me = who;
  $('#sign-in').hidden = true;
  $('#app').hidden = false;
  $('#who').hidden = false;
  $('#who-name').textContent = `${who.user} (${who.role}) · ${who.identityDomain}`;
  $('#domain').textContent = who.identityDomain;
  loadDeployments().catch(e => showError('#app-error', e));
}
function signedOut() {
  me = null;
  current = null;
  $('#app').hidden = true;
  $('#who').hidden = true;
  $('#deployment').hidden = true;
  $('#sign-in').hidden = false;
  $('#sign-in input[name=user]').focus();
}

$('#sign-in').addEventListener('submit', async ev => {
  ev.preventDefault();
  const form = new FormData(ev.target);
  showError('#sign-in-error', null);
  try {
    const { body } = await api('/console/session', {
      method: 'POST', body: JSON.stringify({ user: form.get('user'), password: form.get('password') }),
    });
    ev.target.reset();
    signedIn(body);
  } catch (e) { showError('#sign-in-error', e); }
});
$('#sign-out').addEventListener('click', async () => {
  try { await api('/console/session', { method: 'DELETE' }); } catch { /* gone already */ }
  signedOut();
});

async function detail(name) {
  return (await api(`${PREFIX}/${me.identityDomain}/${encodeURIComponent(name)}`)).body;
}
function completedOf(b) { return parseApiDate(b.backupCompleteDate); }

function rangeOf(d, backups) {
  const pitr = d.pointInTimeRecovery && d.pointInTimeRecovery.recoverableRange;
  if (pitr && pitr.earliest.timestamp && pitr.latest.timestamp) {
    return { continuous: true, from: parseApiDate(pitr.earliest.timestamp), to: parseApiDate(pitr.latest.timestamp) };
  }
  // A shipped SQLite log: its newest stretch, any second of it.
  const shipped = d.continuousArchiving && d.continuousArchiving.ranges;
  if (shipped && shipped.length) {
    const last = shipped[shipped.length - 1];
    const to = last.latest === 'now' ? new Date(Math.floor(Date.now() / 1000) * 1000) : parseApiDate(last.latest);
    return { continuous: true, from: new Date(parseApiDate(last.earliest).getTime() + 1000), to };
  }
  const done = backups.filter(b => b.status === 'COMPLETED').map(completedOf).filter(Boolean);
  done.sort((a, b) => a - b);
  return { continuous: false, moments: done, from: done[0], to: done[done.length - 1] };
}
function schedule(c) {
  if (!c || !c.autoBackupEnabled) return 'off';
  const when = c.cron ? `cron ${c.cron}` : `daily ${c.autoBackupWindow} UTC`;
  return c.nextScheduledBackup ? `${when}; next ${c.nextScheduledBackup}` : when;
}

async function loadDeployments() {
  const { body } = await api(`${PREFIX}/${me.identityDomain}`);
  const tbody = $('#deployments tbody');
  tbody.replaceChildren();
  for (const s of body.services) {
    const d = await detail(s.service_name);
    const backups = (await api(`${PREFIX}/${me.identityDomain}/${encodeURIComponent(s.service_name)}/backups`)).body.backupList;
    const row = tbody.insertRow();
    row.dataset.name = s.service_name;
    if (current && current.service_name === s.service_name) row.classList.add('selected');
    const open = document.createElement('button');
    open.type = 'button';
    open.textContent = s.service_name;
    open.addEventListener('click', () => select(s.service_name).catch(e => showError('#app-error', e)));
    row.insertCell().append(open);
    cell(row, d.engine);
    const last = d.lastBackup ? completedOf(d.lastBackup) : null;
    cell(row, last ? `${apiDate(last)} UTC` : 'never');
    cell(row, age(last)).className = 'age';
    const r = rangeOf(d, backups);
    cell(row, r.from ? `${apiDate(r.from)} – ${apiDate(r.to)} UTC` : 'nothing to recover yet');
    cell(row, schedule(d.backupConfig));
  }
}

async function select(name) {
  current = await detail(name);
  for (const row of $('#deployments tbody').rows) row.classList.toggle('selected', row.dataset.name === name);
  $('#deployment').hidden = false;
  $('#deployment-title .name').textContent = name;
  // Recovery into another place, where the engine can (`recoversInto`).
  const into = current.recoversInto || [];
  $('#into').hidden = into.length === 0;
  // One field per setting the copy may name; the first says where.
  $('#into .settings').replaceChildren(...into.map((setting, i) => {
    const label = document.createElement('label');
    const input = document.createElement('input');
    input.name = `copy-${setting}`;
    input.size = 28;
    input.setAttribute('aria-label', i === 0 ? 'Where to restore the copy' : `The copy's ${setting}`);
    label.append(`${setting} `, input);
    return label;
  }));
  $('#recover input[value=place]').checked = true;
  await loadBackups();
  $('#deployment-title').scrollIntoView({ block: 'nearest' });
}

async function loadBackups() {
  const name = current.service_name;
  const list = (await api(`${PREFIX}/${me.identityDomain}/${encodeURIComponent(name)}/backups`)).body.backupList;
  const tbody = $('#backups tbody');
  tbody.replaceChildren();
  const tags = $('#recover select[name=tag]');
  tags.replaceChildren();
  for (const b of list) {
    const row = tbody.insertRow();
    cell(row, b.dbTag);
    cell(row, b.status);
    cell(row, b.backupStartDate);
    cell(row, b.backupCompleteDate || '—');
    cell(row, bytes(b.logicalBytes));
    // Its last restore drill: OK or FAILED, when; what it found on hover.
    const drill = cell(row, b.verifyStatus ? `${b.verifyStatus} ${b.lastVerified}` : '—');
    if (b.verifyMessage) drill.title = b.verifyMessage;
    if (b.status === 'COMPLETED') tags.add(new Option(`${b.dbTag} (${b.backupCompleteDate})`, b.dbTag));
  }
  const r = rangeOf(current, list);
  continuous = r.continuous;
  const slider = $('#recover input[name=slider]');
  if (r.continuous) {
    moments = [r.from.getTime(), r.to.getTime()];
    slider.min = 0; slider.max = Math.round((moments[1] - moments[0]) / 1000); slider.step = 1;
    $('#range-hint').textContent = `Any second from ${apiDate(r.from)} to ${apiDate(r.to)} UTC (archived WAL).`;
  } else {
    moments = (r.moments || []).map(d => d.getTime());
    slider.min = 0; slider.max = Math.max(0, moments.length - 1); slider.step = 1;
    $('#range-hint').textContent = moments.length
      ? `${current.engine} recovers to the moments its backups completed (no WAL archive): ${moments.length} to pick from.`
      : 'No completed backup yet.';
  }
  slider.value = slider.max;
  slider.disabled = !r.from;
  pick();
}

function pick() {
  const v = +$('#recover input[name=slider]').value;
  const t = continuous ? moments[0] + v * 1000 : moments[v];
  if (t != null) $('#recover input[name=timestamp]').value = apiDate(new Date(t));
}
$('#recover input[name=slider]').addEventListener('input', () => {
  pick();
  $('#recover input[value=moment]').checked = true;
});
$('#recover input[name=timestamp]').addEventListener('input', () => { $('#recover input[value=moment]').checked = true; });
$('#recover select[name=tag]').addEventListener('change', () => { $('#recover input[value=tag]').checked = true; });

$('#backup-now').addEventListener('click', async () => {
  showError('#app-error', null);
  try {
    const { resp } = await api(`${PREFIX}/${me.identityDomain}/${encodeURIComponent(current.service_name)}/backups`,
      { method: 'POST', body: '{}' });
    follow(resp.headers.get('Location'));
  } catch (e) { showError('#app-error', e); }
});

$('#recover').addEventListener('submit', ev => {
  ev.preventDefault();
  showError('#app-error', null);
  const form = new FormData(ev.target);
  const target = form.get('target');
  let body, what;
  if (target === 'latest') {
    body = { latest: true };
    what = 'its latest state: the latest backup, then everything archived since';
  } else if (target === 'tag') {
    if (!form.get('tag')) return showError('#app-error', 'no completed backup to recover from');
    body = { tag: form.get('tag') };
    what = `backup ${form.get('tag')}`;
  } else {
    const t = parseApiDate(form.get('timestamp'));
    if (!t) return showError('#app-error', 'the moment must read dd-MMM-yyyy HH:mm:ss, e.g. 23-Jul-2016 23:04:54');
    body = { timestamp: apiDate(t) };
    what = `its state at ${apiDate(t)} UTC`;
  }
  const dialog = $('#confirm');
  const copy = form.get('into') === 'copy' && !$('#into').hidden;
  if (copy) {
    const [where] = current.recoversInto;
    if (!form.get(`copy-${where}`)) return showError('#app-error', `name where to restore the copy (its ${where})`);
    body.target = {};
    for (const setting of current.recoversInto) {
      if (form.get(`copy-${setting}`)) body.target[setting] = form.get(`copy-${setting}`);
    }
    if (form.get('replace')) body.replace = true;
  }
  const place = copy ? Object.entries(body.target).map(([k, v]) => `${k} ${v}`).join(', ') : '';
  dialog.querySelector('.verb').textContent = copy ? 'Restore a copy of' : 'Overwrite';
  dialog.querySelector('.name').textContent = `${current.service_name}`;
  dialog.querySelector('.what').textContent = copy
    ? `This restores ${what} of deployment ${current.service_name} (${current.engine}) in identity domain ` +
      `${me.identityDomain} into ${place}; the deployment is not changed.`
    : `This replaces the current contents of deployment ${current.service_name} (${current.engine}) ` +
      `in identity domain ${me.identityDomain} with ${what}.`;
  dialog.querySelector('.loss').hidden = copy && !body.replace;
  dialog.querySelector('.loss').textContent = copy
    ? `What is at ${place} now is replaced.`
    : 'Everything written to it after that point is lost.';
  $('#confirm-ok').textContent = copy ? 'Restore the copy' : `Overwrite ${current.service_name}`;
  dialog.returnValue = '';
  dialog.onclose = async () => {
    if (dialog.returnValue !== 'ok') return;
    try {
      const { resp } = await api(
        `${PREFIX}/${me.identityDomain}/${encodeURIComponent(current.service_name)}/backups/recovery`,
        { method: 'POST', body: JSON.stringify(body) });
      follow(resp.headers.get('Location'));
    } catch (e) { showError('#app-error', e); }
  };
  dialog.showModal();
});

// Live progress of a job until it ends, then its activity log.
async function follow(location) {
  const panel = $('#job');
  panel.hidden = false;
  panel.querySelector('.activity').replaceChildren();
  const path = new URL(location, window.location.href).pathname;
  for (;;) {
    let job;
    try { job = (await api(path)).body; } catch (e) { showError('#app-error', e); return; }
    panel.querySelector('.id').textContent = job.job_id;
    panel.querySelector('.operation').textContent = job.job_operation;
    panel.querySelector('.status').textContent = job.job_status;
    panel.dataset.status = job.job_status;
    const pct = job.progress && job.progress.percent;
    const bar = panel.querySelector('progress');
    if (pct == null) bar.removeAttribute('value'); else bar.value = pct;
    panel.querySelector('.percent').textContent = pct == null ? bytes(job.progress.bytes_done) : `${pct.toFixed(0)} %`;
    panel.querySelector('.message').textContent = job.message;
    if (job.job_status !== 'In Progress') {
      const log = (await api(`/paas/api/v1.1/activitylog/${me.identityDomain}/job/${job.job_id}`)).body;
      const list = panel.querySelector('.activity');
      for (const m of log.messages) {
        const li = document.createElement('li');
        li.textContent = `${m.activityDate}: ${m.message}`;
        list.append(li);
      }
      await loadDeployments();
      await loadBackups();
      return;
    }
    await new Promise(r => setTimeout(r, 500));
  }
}

// A reloaded page resumes its session.
fetch('/console/session', { credentials: 'same-origin', headers: { 'X-Strongbox-Console': '1' } })
  .then(r => (r.ok ? r.json().then(signedIn) : signedOut()))
  .catch(signedOut);
