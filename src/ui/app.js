// The Guardia console: sign-in, router (hash routes), top bar. Views live in their own modules.
import {h, clear} from './dom.js';
import {api, setCsrf, ApiError} from './api.js';
import {mountTasks} from './tasks.js';
import {mountRollout} from './rollout.js';
import {mountReview} from './review.js';

const main = document.getElementById('main');
const who = document.getElementById('who');
const nav = document.getElementById('nav');
const signoutBtn = document.getElementById('signout');

const ctx = {session: null, has: (role) => !!ctx.session && ctx.session.roles.includes(role)};
let view = null;        // {route, update(route), unmount()}

function parseRoute() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'sr' && parts[1]) {
    if (parts[2] === 'review') return {view: 'review', sr: parts[1]};
    if (parts[2] === 'node' && parts[3]) return {view: 'rollout', sr: parts[1], node: parts[3]};
    return {view: 'rollout', sr: parts[1], node: null};
  }
  return {view: 'tasks'};
}

function route() {
  if (!ctx.session) { showSignIn(); return; }
  const r = parseRoute();
  if (view && view.route.view === r.view && view.route.sr === r.sr && view.update) {
    view.route = r;
    view.update(r);
    return;
  }
  if (view) view.unmount();
  clear(main);
  const mount = r.view === 'review' ? mountReview : r.view === 'rollout' ? mountRollout : mountTasks;
  view = mount(main, r, ctx);
  view.route = r;
  document.title = r.sr ? `${r.sr} · Guardia` : 'Tasks · Guardia';
}

function setSession(s) {
  ctx.session = s;
  setCsrf(s ? s.csrf : null);
  clear(who);
  if (s) {
    who.append(h('span', {class: 'principal', id: 'principal', text: s.principal}),
               h('span', {class: 'roles', text: s.roles.join(' · ')}));
  }
  signoutBtn.hidden = !s;
  nav.hidden = !s;
}

function showSignIn(message) {
  if (view) { view.unmount(); view = null; }
  clear(main);
  document.title = 'Sign in · Guardia';
  const token = h('input', {id: 'token', type: 'password', autocomplete: 'current-password', required: true,
                            spellcheck: 'false', 'aria-describedby': 'signin-help'});
  const err = h('p', {id: 'signin-error', class: 'error', role: 'alert', hidden: !message, text: message || ''});
  const form = h('form', {class: 'signin card', id: 'signin-form'},
    h('h1', {text: 'Sign in to the Guardia console'}),
    h('label', {for: 'token', text: 'Client token'}), token,
    h('p', {id: 'signin-help', class: 'muted',
            text: 'The token of one of the service\'s API clients (service.clients). It is sent once to create a session cookie and is not stored by the browser.'}),
    h('button', {type: 'submit', class: 'btn primary', id: 'signin-submit', text: 'Sign in'}), err);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    err.hidden = true;
    try {
      const s = await api('POST', '/ui/session', {token: token.value.trim()});
      token.value = '';
      setSession(s);
      if (!location.hash || location.hash === '#/' || location.hash === '#') location.hash = '#/tasks';
      route();
    } catch (ex) {
      err.textContent = ex.status === 401 ? 'Unknown token: no client of this service has it.' : ex.message;
      err.hidden = false;
    }
  });
  main.append(form);
  token.focus();
}

signoutBtn.addEventListener('click', async () => {
  try { await api('DELETE', '/ui/session'); } catch (e) { if (!(e instanceof ApiError) || e.status !== 401) console.warn(e); }
  setSession(null);
  showSignIn();
});

// An API answer 401 anywhere means the session is gone (expired, service restarted).
window.addEventListener('guardia:unauthorized', () => { setSession(null); showSignIn('Your session ended; sign in again.'); });
window.addEventListener('hashchange', route);

(async () => {
  try {
    setSession(await api('GET', '/ui/session'));
  } catch (e) {
    setSession(null);
  }
  route();
})();
