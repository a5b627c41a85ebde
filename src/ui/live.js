// The live rollout component: every node as a cell grouped by tier, counts, rate, ETA, the
// safety gate and the rollout's control state, fed by ONE EventSource on
// /api/deploy/{sr}/events (a snapshot, then coalesced deltas). Cells are found by name through a
// Map, DOM writes are batched into one requestAnimationFrame, and a single delegated click
// handler serves every cell, so a 1,000-node rollout stays smooth.
import {h, clear, fmtTime, fmtDuration, badge} from './dom.js';
import {api, enc} from './api.js';

// Node state -> colour group (the legend). Failed-and-rolled-back is amber, a rollback asked
// for by a PM, an operator or the abort policy is purple.
const GROUP = {
  pending: 'pending', running: 'running', deployed: 'deployed', skipped: 'skipped',
  failed_unchanged: 'failed', rollback_failed: 'failed', pm_rollback_failed: 'failed',
  rollback_by_policy_failed: 'failed', recovery_failed: 'failed', pm_rollback_refused: 'failed',
  rolled_back: 'rolledback', rolled_back_by_pm: 'reverted', rolled_back_by_policy: 'reverted',
};
const LEGEND = [['pending', 'pending'], ['running', 'running'], ['failing', 'failing (rolling back)'],
                ['deployed', 'deployed'], ['failed', 'failed'], ['rolledback', 'failed, rolled back'],
                ['reverted', 'rolled back by PM / operator'], ['skipped', 'skipped']];
const IN_FLIGHT = new Set(['RUNNING', 'PAUSED', 'AWAITING_APPROVAL', 'STOPPING']);

export function groupOf(n) {
  const g = GROUP[n.state] || 'failed';
  if (g === 'running' && (n.error || n.step === 'ROLLBACK')) return 'failing';
  return g;
}

export function rolloutState(doc) {
  const r = doc && doc.rollout;
  if (!r) return 'NO ROLLOUT';
  return r.state || r.status || '—';
}

export class LiveRollout {
  /** opts: {actions: bool, onCell(name), onChange(doc, changedNodes)} */
  constructor(sr, ctx, opts) {
    this.sr = sr;
    this.ctx = ctx;
    this.opts = opts || {};
    this.doc = null;                  // the last document, nodes excluded
    this.nodes = new Map();           // name -> node object
    this.cells = new Map();           // name -> cell element
    this.pending = new Map();         // name -> node object waiting for the next frame
    this.frame = 0;
    this.summaryDirty = false;
    this.layoutKey = '';
    this.build();
    this.tick = setInterval(() => this.renderRate(), 1000);
    api('GET', `/api/deploy/${enc(sr)}`).then((d) => { if (!this.doc) this.applySnapshot(d); },
                                                (e) => this.showError(e.message));
    this.connect();
  }

  build() {
    this.err = h('p', {class: 'error', role: 'alert', hidden: true, id: 'live-error'});
    this.live = h('span', {class: 'live', id: 'rollout-live', text: 'connecting…'});
    this.taskBadge = h('span', {id: 'task-status'});
    this.stateBadge = h('span', {id: 'rollout-state'});
    this.stateNote = h('span', {class: 'muted', id: 'rollout-note'});
    this.stats = h('div', {class: 'stats', id: 'counts'});
    this.statEls = {};
    for (const [k, label] of [['total', 'nodes'], ['pending', 'pending'], ['running', 'running'],
                              ['deployed', 'deployed'], ['failed', 'failed'], ['rolled_back', 'rolled back'],
                              ['skipped', 'skipped']]) {
      const b = h('b', {text: '0'});
      this.statEls[k] = b;
      this.stats.append(h('div', {class: `stat s-${k}`, data: {count: k}}, b, h('span', {text: label})));
    }
    this.rate = h('div', {class: 'stat'}, h('b', {id: 'rate', text: '—'}), h('span', {text: 'nodes/min'}));
    this.eta = h('div', {class: 'stat'}, h('b', {id: 'eta', text: '—'}), h('span', {text: 'ETA'}));
    this.stats.append(this.rate, this.eta);
    this.progress = h('div', {class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100'});
    this.bars = {};
    for (const g of ['deployed', 'failed', 'rolledback', 'reverted', 'running']) {
      this.bars[g] = h('span', {class: `bar g-${g}`});
      this.progress.append(this.bars[g]);
    }
    this.gate = h('div', {class: 'gate', id: 'gate'});
    this.actions = h('div', {class: 'actions', id: 'actions'});
    this.actionMsg = h('p', {class: 'error', role: 'alert', id: 'action-error', hidden: true});
    this.actionOk = h('p', {class: 'ok', role: 'status', id: 'action-ok', hidden: true});
    this.tiers = h('div', {class: 'tiers', id: 'tiers'});
    this.tiers.addEventListener('click', (e) => {
      const cell = e.target.closest('.cell');
      if (cell && this.opts.onCell) this.opts.onCell(cell.dataset.node);
    });
    const legend = h('ul', {class: 'legend', 'aria-label': 'Legend'},
      LEGEND.map(([g, label]) => h('li', null, h('span', {class: `swatch g-${g}`}), label)));
    this.el = h('section', {class: 'live-rollout'},
      h('div', {class: 'status-line'}, h('span', {class: 'muted', text: 'task'}), this.taskBadge,
        h('span', {class: 'muted', text: 'rollout'}), this.stateBadge, this.stateNote, this.live),
      this.stats, this.progress, this.gate,
      this.opts.actions ? this.actions : null, this.actionMsg, this.actionOk, this.err,
      legend, this.tiers);
  }

  connect() {
    this.es = new EventSource(`/api/deploy/${enc(this.sr)}/events`);
    this.es.addEventListener('open', () => { this.live.textContent = 'live'; this.live.className = 'live on'; });
    this.es.addEventListener('error', () => {
      this.live.textContent = this.es.readyState === EventSource.CLOSED ? 'stream closed' : 'reconnecting…';
      this.live.className = 'live off';
      if (this.es.readyState === EventSource.CLOSED) {
        // EventSource hides the answer: ask the API why (unknown SR, signed out). When the
        // document reads fine but the stream is refused (a proxy that breaks event streams, a
        // service without them, too many streams), read the document every 2 s instead.
        api('GET', `/api/deploy/${enc(this.sr)}`).then((d) => { this.applySnapshot(d); this.startPolling(); },
                                                       (e) => this.showError(e.message));
      }
    });
    this.es.addEventListener('snapshot', (e) => this.applySnapshot(JSON.parse(e.data)));
    this.es.addEventListener('nodes', (e) => {
      const d = JSON.parse(e.data);
      if (!this.doc) return;
      if (d.counts) this.doc.counts = d.counts;
      if (d.tiers) this.doc.tiers = d.tiers;
      const nodes = d.nodes || [];
      if (nodes.some((n) => !this.cells.has(n.name))) { this.resync(); return; }
      for (const n of nodes) this.queue(n);
      this.summaryDirty = true;
      this.schedule();
    });
    this.es.addEventListener('rollout', (e) => {
      const d = JSON.parse(e.data);
      if (!this.doc) return;
      const oldId = this.doc.rollout ? this.doc.rollout.id : null;
      if (d.rollout && d.rollout.id !== oldId) { this.resync(); return; }
      for (const k of ['task_status', 'rollout', 'gate']) if (k in d) this.doc[k] = d[k];
      this.summaryDirty = true;
      this.schedule();
    });
  }

  startPolling() {
    if (this.poll) return;
    this.live.textContent = 'polling every 2 s (no live stream)';
    this.live.className = 'live off';
    this.live.title = `The service refused /api/deploy/${this.sr}/events (at most 16 streams per client: close other tabs)`;
    this.poll = setInterval(() => {
      api('GET', `/api/deploy/${enc(this.sr)}`).then((d) => this.applySnapshot(d), (e) => this.showError(e.message));
    }, 2000);
  }

  /** A node or rollout this view does not know yet (a trigger): read the whole document again. */
  resync() {
    if (this.resyncing) return;
    this.resyncing = true;
    api('GET', `/api/deploy/${enc(this.sr)}`).then((d) => this.applySnapshot(d), (e) => this.showError(e.message))
      .finally(() => { this.resyncing = false; });
  }

  showError(msg) {
    this.err.textContent = msg;
    this.err.hidden = false;
  }

  applySnapshot(d) {
    const {nodes, ...rest} = d;
    this.doc = rest;
    this.err.hidden = true;
    const list = nodes || [];
    const key = list.map((n) => `${n.tier}:${n.name}`).sort().join(',');
    if (key !== this.layoutKey) {
      this.layoutKey = key;
      this.layout(list);
    }
    for (const n of list) this.queue(n);
    this.summaryDirty = true;
    this.schedule();
  }

  layout(list) {
    clear(this.tiers);
    this.cells.clear();
    this.nodes.clear();
    this.pending.clear();
    this.tierEls = new Map();
    const byTier = new Map();
    for (const n of list) {
      if (!byTier.has(n.tier)) byTier.set(n.tier, []);
      byTier.get(n.tier).push(n);
    }
    const compact = list.length > 60;
    this.tiers.classList.toggle('compact', compact);
    const frag = document.createDocumentFragment();
    for (const tier of [...byTier.keys()].sort((a, b) => a - b)) {
      const stats = h('span', {class: 'tier-stats muted'});
      const grid = h('div', {class: 'cells', role: 'group', 'aria-label': `Tier ${tier} nodes`});
      for (const n of byTier.get(tier).sort((a, b) => a.name.localeCompare(b.name))) {
        const cell = h('button', {type: 'button', class: 'cell g-pending', data: {node: n.name, state: ''}},
                       compact ? null : h('span', {class: 'cell-name', text: n.name}));
        this.cells.set(n.name, cell);
        grid.append(cell);
      }
      this.tierEls.set(tier, stats);
      frag.append(h('section', {class: 'tier', data: {tier: String(tier)}},
                    h('h2', null, `Tier ${tier}`, stats), grid));
    }
    if (!list.length) frag.append(h('p', {class: 'muted', id: 'no-nodes', text: 'No rollout yet: the nodes appear once the task is triggered.'}));
    this.tiers.append(frag);
  }

  queue(n) {
    const prev = this.nodes.get(n.name) || {};
    if (Object.keys(n).every((k) => prev[k] === n[k])) return;      // nothing new (a re-read)
    const merged = {...prev, ...n};
    this.nodes.set(n.name, merged);
    this.pending.set(n.name, merged);
  }

  schedule() {
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    const changed = [...this.pending.keys()];
    for (const n of this.pending.values()) {
      const cell = this.cells.get(n.name);
      if (!cell) continue;
      const g = groupOf(n);
      const cls = `cell g-${g}${n.error ? ' has-error' : ''}`;
      if (cell.className !== cls) cell.className = cls;
      if (cell.dataset.state !== n.state) cell.dataset.state = n.state;
      if (cell.dataset.group !== g) cell.dataset.group = g;
      const label = `${n.name}: ${n.state.replace(/_/g, ' ')}${n.step ? ` (${n.step})` : ''}${n.error ? ` — ${n.error}` : ''}`;
      if (cell.title !== label) { cell.title = label; cell.setAttribute('aria-label', label); }
    }
    this.pending.clear();
    if (this.summaryDirty) { this.summaryDirty = false; this.renderSummary(); }
    if (this.opts.onChange) this.opts.onChange(this.doc, changed);
  }

  renderSummary() {
    const d = this.doc;
    clear(this.taskBadge).append(badge(d.task_status));
    const st = rolloutState(d);
    clear(this.stateBadge).append(badge(st));
    const r = d.rollout || {};
    const notes = [];
    if (r.awaiting_tier) notes.push(`waiting for the approval of tier ${r.awaiting_tier}`);
    if (r.state_by) notes.push(`by ${r.state_by}`);
    if (r.reason) notes.push(r.reason);
    if (r.created_ms) notes.push(`started ${fmtTime(r.created_ms)}`);
    if (r.finished_ms) notes.push(`ended ${fmtTime(r.finished_ms)}`);
    this.stateNote.textContent = notes.join(' · ');
    const c = d.counts || {};
    for (const [k, b] of Object.entries(this.statEls)) b.textContent = String(c[k] ?? 0);
    const tally = {deployed: 0, failed: 0, rolledback: 0, reverted: 0, running: 0};
    for (const n of this.nodes.values()) {
      const g = groupOf(n);
      if (g === 'failing') tally.running++;
      else if (g in tally) tally[g]++;
    }
    const total = this.nodes.size || 1;
    for (const [g, el] of Object.entries(this.bars)) el.style.width = `${(100 * tally[g]) / total}%`;
    const done = c.total ? c.total - (c.pending || 0) - (c.running || 0) : 0;
    this.progress.setAttribute('aria-valuenow', String(Math.round((100 * done) / (c.total || 1))));
    this.progress.setAttribute('aria-label', `${done} of ${c.total || 0} nodes finished`);
    for (const t of d.tiers || []) {
      const el = this.tierEls && this.tierEls.get(t.tier);
      if (el) el.textContent = `${t.finished}/${t.total} finished · ${t.failed} failed · ${t.in_flight} in flight${t.skipped ? ` · ${t.skipped} skipped` : ''}`;
    }
    this.renderGate();
    this.renderRate();
    if (this.opts.actions) this.renderActions();
  }

  renderGate() {
    const g = this.doc.gate;
    clear(this.gate);
    this.gate.className = 'gate';
    if (!g) {
      this.gate.append(h('span', {class: 'muted', text: this.doc.rollout ? 'Safety gate: no verdict yet' : 'Safety gate: no rollout yet'}));
      return;
    }
    const pct = g.max_failure_ratio !== undefined ? `${Math.round(g.max_failure_ratio * 1000) / 10}%` : '?';
    this.gate.classList.add(g.tripped ? 'tripped' : 'holding');
    this.gate.append(h('b', {text: g.tripped ? 'Safety gate TRIPPED' : 'Safety gate holding'}),
      ` · tier ${g.tier}: ${g.failed} failed of ${g.done} finished (limit ${pct})`,
      h('span', {class: 'gate-reason', text: g.reason ? ` · ${g.reason}` : ''}));
    this.gate.dataset.tripped = String(!!g.tripped);
  }

  renderRate() {
    if (!this.doc) return;
    const r = this.doc.rollout;
    const c = this.doc.counts || {};
    const rateEl = this.rate.querySelector('b');
    const etaEl = this.eta.querySelector('b');
    let first = Infinity;
    let last = 0;
    let finished = 0;
    for (const n of this.nodes.values()) {
      if (n.started_ms) first = Math.min(first, n.started_ms);
      if (n.finished_ms && n.state !== 'pending' && n.state !== 'running') { finished++; last = Math.max(last, n.finished_ms); }
    }
    const inFlight = r && IN_FLIGHT.has(rolloutState(this.doc));
    const end = inFlight ? Date.now() : last;
    const minutes = first < Infinity && end > first ? (end - first) / 60000 : 0;
    const rate = minutes > 0 && finished > 0 ? finished / minutes : 0;
    rateEl.textContent = rate ? (rate >= 10 ? rate.toFixed(0) : rate.toFixed(1)) : '—';
    const remaining = (c.pending || 0) + (c.running || 0);
    if (!inFlight) etaEl.textContent = remaining === 0 && r ? 'done' : '—';
    else etaEl.textContent = rate && remaining ? `~${fmtDuration((remaining / rate) * 60000)}` : '—';
  }

  renderActions() {
    const d = this.doc;
    const st = rolloutState(d);
    const has = this.ctx.has;
    const task = d.task_status;
    // Rebuilt only when what it offers changes: a re-render would drop focus and typed text.
    const key = `${task}|${st}|${d.rollout ? d.rollout.awaiting_tier : ''}`;
    if (key === this.actionsKey) return;
    this.actionsKey = key;
    clear(this.actions);
    const btn = (id, label, cls, fn) => h('button', {type: 'button', class: `btn ${cls}`, id, text: label, on: {click: fn}});
    if (has('submit') && (task === 'CREATED' || task === 'FAILED_ROLLBACK')) {
      const approver = h('input', {id: 'approver', type: 'text', placeholder: 'approver id', 'aria-label': 'Approver id',
                                   value: this.ctx.session.principal});
      this.actions.append(h('label', {for: 'approver', class: 'muted', text: 'approver'}), approver,
        btn('act-trigger', task === 'CREATED' ? 'Trigger rollout' : 'Trigger again', 'primary',
            () => this.act('POST', '/api/deploy/trigger', {sr_id: this.sr, approver_id: approver.value.trim()}, 'Rollout triggered')));
    }
    if (task === 'DEPLOYING' && has('operate') && st === 'RUNNING')
      this.actions.append(btn('act-pause', 'Pause', '', () => this.act('POST', `/api/deploy/${enc(this.sr)}/pause`, {}, 'Paused')));
    if (task === 'DEPLOYING' && ((st === 'PAUSED' && has('operate')) || (st === 'AWAITING_APPROVAL' && (has('operate') || has('validate')))))
      this.actions.append(btn('act-resume', st === 'AWAITING_APPROVAL' ? `Approve tier ${d.rollout.awaiting_tier || ''} and resume` : 'Resume', 'primary',
                              () => this.act('POST', `/api/deploy/${enc(this.sr)}/resume`, {}, 'Resumed')));
    if (task === 'DEPLOYING' && has('operate') && ['RUNNING', 'PAUSED', 'AWAITING_APPROVAL'].includes(st))
      this.actions.append(btn('act-abort', 'Abort', 'danger', () => this.act('POST', `/api/deploy/${enc(this.sr)}/abort`, {}, 'Abort requested')));
    if (has('operate') && ['PENDING_PM_VALIDATION', 'COMPLETED', 'FAILED_ROLLBACK'].includes(task))
      this.actions.append(btn('act-rollback', 'Roll back every node', 'danger',
                              () => this.act('POST', `/api/deploy/${enc(this.sr)}/rollback`, {}, 'Rollback started')));
    if (task === 'PENDING_PM_VALIDATION')
      this.actions.append(h('a', {class: 'btn', href: `#/sr/${enc(this.sr)}/review`, id: 'act-review', text: 'PM review'}));
  }

  async act(method, path, body, okText) {
    this.actionMsg.hidden = true;
    this.actionOk.hidden = true;
    for (const b of this.actions.querySelectorAll('button')) b.disabled = true;
    try {
      await api(method, path, body);
      this.actionOk.textContent = okText;
      this.actionOk.hidden = false;
      clearTimeout(this.okTimer);
      this.okTimer = setTimeout(() => { this.actionOk.hidden = true; }, 5000);
    } catch (e) {
      this.actionMsg.textContent = e.message;
      this.actionMsg.hidden = false;
    } finally {
      for (const b of this.actions.querySelectorAll('button')) b.disabled = false;
    }
  }

  close() {
    if (this.es) this.es.close();
    if (this.frame) cancelAnimationFrame(this.frame);
    clearInterval(this.tick);
    clearInterval(this.poll);
    clearTimeout(this.okTimer);
  }
}
