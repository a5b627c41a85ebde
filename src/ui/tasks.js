// The task list: GET /api/tasks with filters, kept live by the task stream /api/events.
import {h, clear, fmtTime, badge} from './dom.js';
import {api, enc} from './api.js';

const STATUSES = ['CREATED', 'DEPLOYING', 'PENDING_PM_VALIDATION', 'COMPLETED', 'FAILED_ROLLBACK',
                  'ROLLING_BACK', 'ROLLED_BACK', 'ROLLBACK_FAILED'];

export function mountTasks(root, _route, _ctx) {
  const tasks = new Map();              // sr_id -> task
  let nextBefore = null;
  let timer = null;
  const status = h('select', {id: 'filter-status', 'aria-label': 'Filter by status'},
    h('option', {value: '', text: 'any status'}), STATUSES.map((s) => h('option', {value: s, text: s})));
  const q = h('input', {id: 'filter-q', type: 'search', placeholder: 'SR, title or system',
                        'aria-label': 'Filter by text'});
  const requester = h('input', {id: 'filter-requester', type: 'search', placeholder: 'requester',
                                'aria-label': 'Filter by requester'});
  const err = h('p', {class: 'error', role: 'alert', hidden: true});
  const live = h('span', {class: 'live', id: 'tasks-live', text: 'connecting…'});
  const tbody = h('tbody', {id: 'task-rows'});
  const more = h('button', {type: 'button', class: 'btn', id: 'tasks-more', hidden: true, text: 'Older tasks'});
  const empty = h('p', {class: 'muted', hidden: true, text: 'No task matches.'});

  root.append(h('section', {class: 'page'},
    h('div', {class: 'page-head'}, h('h1', {text: 'Tasks'}), live),
    h('form', {class: 'filters', role: 'search'}, status, q, requester),
    err,
    h('table', {class: 'grid-table', id: 'task-table'},
      h('thead', null, h('tr', null, ['SR', 'Title / system', 'Status', 'Requester', 'Approver', 'Created', 'Updated']
        .map((t) => h('th', {scope: 'col', text: t})))),
      tbody),
    empty, more));

  function matches(t) {
    if (status.value && t.status !== status.value) return false;
    if (requester.value.trim() && t.requester !== requester.value.trim()) return false;
    const text = q.value.trim().toLowerCase();
    if (text && ![t.sr_id, t.title, t.system_name].some((f) => (f || '').toLowerCase().includes(text))) return false;
    return true;
  }

  function render() {
    clear(tbody);
    const list = [...tasks.values()].filter(matches).sort((a, b) => (b.updated_ms || 0) - (a.updated_ms || 0));
    for (const t of list) {
      const link = h('a', {href: `#/sr/${enc(t.sr_id)}`, text: t.sr_id});
      const review = t.status === 'PENDING_PM_VALIDATION'
        ? h('a', {href: `#/sr/${enc(t.sr_id)}/review`, class: 'review-link', text: 'review'}) : null;
      tbody.append(h('tr', {data: {sr: t.sr_id, status: t.status}},
        h('td', null, link, review ? ' ' : null, review),
        h('td', null, t.title ? h('div', {text: t.title}) : null, h('div', {class: 'muted', text: `${t.inst_id || ''} / ${t.system_name || ''}`})),
        h('td', null, badge(t.status)),
        h('td', {text: t.requester || '—'}),
        h('td', {text: t.approver || '—'}),
        h('td', {text: fmtTime(t.created_ms)}),
        h('td', {text: fmtTime(t.updated_ms)})));
    }
    empty.hidden = list.length > 0;
    more.hidden = nextBefore === null;
  }

  async function load(append) {
    const params = new URLSearchParams({limit: '100'});
    if (status.value) params.set('status', status.value);
    if (q.value.trim()) params.set('q', q.value.trim());
    if (requester.value.trim()) params.set('requester', requester.value.trim());
    if (append && nextBefore !== null) params.set('before', String(nextBefore));
    try {
      const d = await api('GET', `/api/tasks?${params}`);
      if (!append) tasks.clear();
      for (const t of d.tasks) tasks.set(t.sr_id, t);
      nextBefore = d.next_cursor ?? d.next_before ?? null;
      err.hidden = true;
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    }
    render();
  }

  const reload = () => { clearTimeout(timer); timer = setTimeout(() => load(false), 250); };
  status.addEventListener('change', () => load(false));
  q.addEventListener('input', reload);
  requester.addEventListener('input', reload);
  more.addEventListener('click', () => load(true));

  const es = new EventSource('/api/events');
  es.addEventListener('open', () => { live.textContent = 'live'; live.className = 'live on'; });
  let poll = 0;
  es.addEventListener('error', () => {
    live.className = 'live off';
    if (es.readyState !== EventSource.CLOSED) { live.textContent = 'reconnecting…'; return; }
    live.textContent = 'polling every 5 s (no live stream)';       // the stream was refused
    if (!poll) poll = setInterval(() => load(false), 5000);
  });
  es.addEventListener('task', (e) => {
    const t = JSON.parse(e.data);
    tasks.set(t.sr_id, {...(tasks.get(t.sr_id) || {}), ...t});
    render();
  });
  load(false);

  return {unmount() { es.close(); clearTimeout(timer); clearInterval(poll); }};
}
