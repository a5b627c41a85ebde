// The PM review page, #/sr/SR/review: what was deployed (nodes and their final state, health,
// durations, the artifacts and their sha256), the verdict (accept / reject with a comment),
// then the rollback's progress live in the same view.
import {h, clear, fmtTime, fmtDuration, fmtBytes, badge} from './dom.js';
import {api, enc} from './api.js';
import {LiveRollout} from './live.js';
import {NodeDrawer} from './drawer.js';

function health(n) {
  if (n.state === 'deployed' || n.state === 'rolled_back_by_pm' || n.state === 'pm_rollback_refused' ||
      n.state === 'pm_rollback_failed') return 'passed';
  if (n.state === 'rolled_back' || n.state === 'failed_unchanged' || n.state === 'rollback_failed')
    return n.step === 'HEALTH' ? 'failed' : `failed at ${n.step || '?'}`;
  return '—';
}

export function mountReview(root, route, ctx) {
  const sr = route.sr;
  let task = null;
  let lastStatus = null;
  let tableTimer = 0;
  const info = h('dl', {class: 'facts wide', id: 'review-facts'});
  const arts = h('tbody', {id: 'review-artifacts'});
  const nodesBody = h('tbody', {id: 'review-nodes'});
  const verdictBox = h('div', {class: 'verdict card', id: 'verdict'});
  const verdictErr = h('p', {class: 'error', role: 'alert', id: 'verdict-error', hidden: true});
  const verdictOk = h('p', {class: 'ok', role: 'status', id: 'verdict-ok', hidden: true});
  const drawer = new NodeDrawer(sr, () => drawer.hide());
  const live = new LiveRollout(sr, ctx, {
    actions: false,
    onCell: (name) => drawer.open(name),
    onChange: (doc, changed) => {
      for (const n of changed) drawer.changed(n);
      if (doc.task_status !== lastStatus) { lastStatus = doc.task_status; loadTask(); renderVerdict(); }
      if (changed.length && !tableTimer) tableTimer = setTimeout(() => { tableTimer = 0; renderNodes(); }, 300);
    },
  });

  root.append(h('div', {class: 'with-drawer'},
    h('section', {class: 'page'},
      h('div', {class: 'page-head'}, h('h1', null, 'Review ', h('span', {class: 'sr', text: sr})),
        h('a', {href: `#/sr/${enc(sr)}`, class: 'muted', text: 'live rollout'}),
        h('a', {href: '#/tasks', class: 'muted', text: 'all tasks'})),
      h('div', {class: 'review-top'},
        h('div', {class: 'card'}, h('h2', {text: 'Task'}), info,
          h('h2', {text: 'Artifacts'}),
          h('table', {class: 'grid-table small'},
            h('thead', null, h('tr', null, ['name', 'sha256', 'size', 'approved'].map((t) => h('th', {scope: 'col', text: t})))),
            arts)),
        h('div', null, verdictBox, verdictErr, verdictOk)),
      h('h2', {text: 'Nodes'}),
      h('table', {class: 'grid-table small', id: 'review-node-table'},
        h('thead', null, h('tr', null, ['node', 'tier', 'state', 'health', 'duration', 'finished', 'error']
          .map((t) => h('th', {scope: 'col', text: t})))),
        nodesBody),
      h('h2', {text: 'Live'}),
      live.el),
    drawer.el));

  async function loadTask() {
    try {
      task = await api('GET', `/api/tasks/${enc(sr)}`);
    } catch (e) {
      verdictErr.textContent = e.message;
      verdictErr.hidden = false;
      return;
    }
    clear(info);
    const row = (k, v) => [h('dt', {text: k}), h('dd', null, v)];
    info.append(...row('status', badge(task.status)), ...row('title', task.title || '—'),
      ...row('system', `${task.inst_id} / ${task.system_name}`), ...row('requester', task.requester || '—'),
      ...row('approver', task.approver || '—'), ...row('rollout', task.rollout_id || '—'),
      ...row('updated', fmtTime(task.updated_ms)));
    if (task.reason) info.append(...row('reason', task.reason));
    clear(arts);
    const approved = task.approved_artifacts || {};
    for (const a of task.artifacts || []) {
      arts.append(h('tr', null, h('td', {text: a.name}), h('td', {class: 'mono', text: a.sha256}),
        h('td', {class: 'num', text: fmtBytes(a.size)}),
        h('td', {text: approved[a.name] ? (approved[a.name] === a.sha256 ? 'yes' : 'other sha256') : 'no'})));
    }
    renderVerdict();
  }

  function renderNodes() {
    clear(nodesBody);
    const list = [...live.nodes.values()].sort((a, b) => a.tier - b.tier || a.name.localeCompare(b.name));
    for (const n of list) {
      const dur = n.started_ms && n.finished_ms ? n.finished_ms - n.started_ms : null;
      nodesBody.append(h('tr', {data: {node: n.name, state: n.state}},
        h('td', {text: n.name}), h('td', {class: 'num', text: String(n.tier)}), h('td', null, badge(n.state)),
        h('td', {text: health(n)}), h('td', {class: 'num', text: fmtDuration(dur)}), h('td', {text: fmtTime(n.finished_ms)}),
        h('td', {class: 'detail', text: n.error || ''})));
    }
  }

  let verdictKey = '';
  function renderVerdict() {
    const status = (live.doc && live.doc.task_status) || (task && task.status);
    if (verdictKey === String(status)) return;       // keep what the user typed
    verdictKey = String(status);
    clear(verdictBox);
    verdictBox.append(h('h2', {text: 'PM verdict'}));
    if (status !== 'PENDING_PM_VALIDATION') {
      verdictBox.append(h('p', {class: 'muted', id: 'verdict-closed',
        text: `This task is ${status || '…'}: a verdict is given while it is PENDING_PM_VALIDATION.`}));
      return;
    }
    if (!ctx.has('validate')) {
      verdictBox.append(h('p', {class: 'muted', text: `The client ${ctx.session.principal} lacks the role 'validate': it cannot give the verdict.`}));
      return;
    }
    const pm = h('input', {id: 'pm-id', type: 'text', value: ctx.session.principal, 'aria-label': 'PM id'});
    const comment = h('textarea', {id: 'verdict-comment', rows: '3', placeholder: 'What you checked, why you reject…',
                                   'aria-label': 'Comment'});
    const send = async (verdict) => {
      verdictErr.hidden = true;
      verdictOk.hidden = true;
      for (const b of verdictBox.querySelectorAll('button')) b.disabled = true;
      try {
        const body = {verdict, pm_id: pm.value.trim() || ctx.session.principal};
        if (comment.value.trim()) body.comment = comment.value.trim();
        const d = await api('POST', `/api/tasks/${enc(sr)}/validation`, body);
        verdictOk.textContent = `Verdict recorded: ${verdict}; the task is ${d.status}.`;
        verdictOk.hidden = false;
      } catch (e) {
        verdictErr.textContent = e.message;
        verdictErr.hidden = false;
        for (const b of verdictBox.querySelectorAll('button')) b.disabled = false;
      }
    };
    verdictBox.append(
      h('label', {for: 'pm-id', text: 'PM id'}), pm,
      h('label', {for: 'verdict-comment', text: 'Comment'}), comment,
      h('div', {class: 'actions'},
        h('button', {type: 'button', class: 'btn primary', id: 'verdict-accept', text: 'Accept', on: {click: () => send('accepted')}}),
        h('button', {type: 'button', class: 'btn danger', id: 'verdict-reject', text: 'Reject and roll back',
                     on: {click: () => send('rejected')}})));
  }

  loadTask();
  return {
    update() {},
    unmount() { live.close(); drawer.close(); clearTimeout(tableTimer); clear(root); },
  };
}
