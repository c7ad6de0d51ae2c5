// The page: everything the person sees and touches, in the elements of index.html, all looked
// up by id here and nowhere else, but for the few that attention.js (the bell) and invite.js
// (the QR code, Share) keep to themselves.
//
// It shows the three views (choose a name, the lobby, the room), errors next to the control
// they are about, the connection status and its banner, the room bar, the conversation
// (messages, events, our messages still on their way, "Seen" under our last message the peer
// has read), the typing indicator and the composer's character count; it copies the room code
// and the invite link; and `bindControls` tells the wiring (main.js) what the person does.
//
// It keeps none of the chat's state (what it shows comes as arguments from the wiring) and
// never sends on the socket. Every piece of text that comes from a person (names, messages,
// codes) goes into the page through `textContent`, never as HTML, so `<b>` in a message
// shows as `<b>`. In an end-to-end encrypted room, a message this page cannot open is shown
// as a sentence saying so, never as its ciphertext.

import { showInviteLink } from './invite.js';
import { MAX_MESSAGE_CHARS } from './protocol.js';

/** Show the character counter once a message gets this long. */
const COUNTER_FROM_CHARS = 3800;
/** How long a "Copied" confirmation stays on a button. */
const FLASH_MS = 2000;

/** Shorthand for the elements of index.html, all looked up by id. */
const $ = (id) => document.getElementById(id);

/**
 * Where each kind of request shows its errors: the error paragraph, the control to focus,
 * and the view they live in.
 */
const SLOTS = {
  name: { error: 'name-error', field: 'name-input', view: 'name' },
  create: { error: 'create-error', field: 'create-room', view: 'lobby' },
  join: { error: 'join-error', field: 'join-code', view: 'lobby' },
  composer: { error: 'composer-error', field: 'message-input', view: 'room' },
  room: { error: 'room-error', field: 'leave', view: 'room' },
};

/** What a message of an encrypted room shows instead of its text, by why. */
const SEALED_TEXT = {
  opening: 'Decrypting…',
  locked: 'Encrypted message — open the invite link to read it.',
  unverified: 'This message could not be verified, so it is not shown.',
  'earlier-session':
    'This message was sealed for an earlier session of this tab, so it cannot be opened.',
};

/**
 * What the page says when it stopped trusting the server in this room (see main.js,
 * `failRoom`): a link that does not open the room, or a server that broke the rules. Never
 * anything a message said.
 */
export const FAILED_TEXT = {
  'wrong-link':
    'This link does not open this room: it was probably cut short or changed on its way to ' +
    'you. Nothing of the conversation was shown or sent. Leave, and ask for the whole invite ' +
    'link again.',
  broken:
    'The server did not behave as it must, so this conversation is not safe. Nothing more is ' +
    'sent in this room. Leave, and start again with a new room and a new link.',
};

/** What the notice above the conversation says when this page cannot read the room. */
const MISSING_KEY_TEXT = {
  'no-key':
    'This room is end-to-end encrypted. You joined it with the code alone, which cannot ' +
    'carry its key: to read and write here, open the invite link (ask the person who sent ' +
    'you the code for it).',
  unsupported:
    'This room is end-to-end encrypted, but this browser offers no encryption to a page ' +
    'that is not served over https, so it can neither read nor write here.',
};

/**
 * Connects the page's controls to the wiring's handlers in `on`: `submitName(name)`,
 * `changeName()`, `createRoom(encrypted)`, `submitJoin(text)`, `leave()`, `sendChat()`,
 * `composerInput()`, `copyCode(button)` and `reconnect()`.
 */
export function bindControls(on) {
  $('name-form').addEventListener('submit', (event) => {
    event.preventDefault();
    on.submitName($('name-input').value);
  });
  $('name-input').addEventListener('input', () => clearError('name'));
  $('change-name').addEventListener('click', on.changeName);
  $('create-room').addEventListener('click', () => on.createRoom($('create-encrypted').checked));
  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    on.submitJoin($('join-code').value);
  });
  $('join-code').addEventListener('input', () => clearError('join'));
  $('leave').addEventListener('click', on.leave);
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    on.sendChat();
  });
  // Enter sends; Shift+Enter makes a new line; Enter that confirms an IME composition does neither.
  $('message-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      on.sendChat();
    }
  });
  $('message-input').addEventListener('input', on.composerInput);
  $('copy-code').addEventListener('click', (e) => on.copyCode(e.currentTarget));
  $('copy-code-small').addEventListener('click', (e) => on.copyCode(e.currentTarget));
  $('copy-link').addEventListener('click', (e) =>
    copy($('invite-link').value, e.currentTarget, $('invite-link')));
  $('invite-link').addEventListener('focus', (e) => e.currentTarget.select());
  $('reconnect').addEventListener('click', on.reconnect);
}

// ---------------------------------------------------------------------------------------
// Views and errors
// ---------------------------------------------------------------------------------------

/** Shows one of the three views and puts the keyboard focus where the user will start. */
export function showView(name) {
  for (const view of ['name', 'lobby', 'room']) {
    $(`view-${view}`).hidden = view !== name;
  }
  if (name === 'name') {
    $('name-input').focus();
  } else if (name === 'lobby') {
    if ($('join-code').value) $('join-code').focus();
    else $('create-room').focus();
  } else {
    $('message-input').focus();
  }
}

export function currentView() {
  return ['name', 'lobby', 'room'].find((view) => !$(`view-${view}`).hidden);
}

/**
 * Shows `text` under the control of `slot`, marks that control invalid and focuses it,
 * switching to the view it lives in, except to the room's while `inRoom` is false.
 */
export function showError(slot, text, inRoom) {
  const { error, field, view } = SLOTS[slot];
  if (currentView() !== view && !(view === 'room' && !inRoom)) showView(view);
  $(error).textContent = text;
  $(field).setAttribute('aria-invalid', 'true');
  $(field).focus();
}

export function clearError(slot) {
  const { error, field } = SLOTS[slot];
  $(error).textContent = '';
  $(field).removeAttribute('aria-invalid');
}

// ---------------------------------------------------------------------------------------
// The connection's status and banner
// ---------------------------------------------------------------------------------------

export function setConnectionStatus(status) {
  const text = {
    connecting: 'Connecting…',
    reconnecting: 'Reconnecting…',
    connected: 'Connected',
    offline: 'Offline',
  };
  $('conn-status').dataset.state = status;
  $('conn-status').textContent = text[status];
}

export function showBanner(text, button) {
  $('conn-lost-text').textContent = text;
  $('reconnect').textContent = button;
  $('reconnect').disabled = false;
  $('conn-lost').hidden = false;
}

export function hideBanner() {
  $('conn-lost').hidden = true;
}

/** The banner's button, once a reconnect it asked for is under way. */
export function disableRetry() {
  $('reconnect').disabled = true;
}

// ---------------------------------------------------------------------------------------
// The name form and the lobby
// ---------------------------------------------------------------------------------------

/** Opened from an invite link: the join form is prefilled, and the name form says so. */
export function showInvite(code) {
  $('join-code').value = code;
  $('invite-code').textContent = code;
  $('invite-note').hidden = false;
  $('intro-note').hidden = true;
  $('name-submit').textContent = 'Join the room';
}

/** The name form as without an invite: one is used once, a later name change is just that. */
export function forgetInvite() {
  $('invite-note').hidden = true;
  $('intro-note').hidden = false;
  $('name-submit').textContent = 'Continue';
}

/** Our name as the server stored it, in the lobby's greeting. */
export function showName(name) {
  $('lobby-name').textContent = name;
}

/** Puts `name` in the name form without showing it (the name used last time). */
export function prefillName(name) {
  $('name-input').value = name;
}

/** Shows the name form with `name` in it, selected, to be changed. */
export function editName(name) {
  $('name-input').value = name;
  showView('name');
  $('name-input').select();
}

export function setJoinCode(code) {
  $('join-code').value = code;
}

/** A line above the lobby's choices: why we are in the lobby rather than in a room. */
export function showLobbyNote(text) {
  $('lobby-note').textContent = text;
}

export function focusCreateRoom() {
  $('create-room').focus();
}

/** Where this browser offers no encryption (a page not on https), the choice is not offered. */
export function offerEncryption(available) {
  $('create-encrypted').disabled = !available;
  if (!available) $('create-encrypted').checked = false;
  $('create-encrypted-note').textContent = available
    ? ''
    : 'End-to-end encryption needs this page to be opened over https.';
  $('create-encrypted-note').hidden = available;
}

// ---------------------------------------------------------------------------------------
// The room
// ---------------------------------------------------------------------------------------

/**
 * Fills the room view in for `code`: its code, the invite (with `linkKey`, the key of an
 * end-to-end encrypted room, in its fragment), the tab's title; and clears what the lobby
 * said. The conversation stays as it is (see `clearConversation`).
 */
export function showRoom(code, linkKey) {
  $('messages').dataset.room = code;
  $('room-code').textContent = code;
  $('room-code-big').textContent = code;
  $('invite-link').value = inviteLink(code, linkKey);
  showInviteLink($('invite-link').value, flash); // Its QR code and Share button (invite.js).
  $('invite-e2e-note').hidden = !linkKey;
  $('lobby-note').textContent = '';
  clearError('create');
  clearError('join');
  showTitle(code);
}

/** The code of the room whose conversation is on screen, or undefined. */
export function roomShown() {
  return $('messages').dataset.room;
}

/** The tab's title: the room's code while we are in one (`code`), else just "Chat". */
export function showTitle(code) {
  document.title = code ? `Chat · ${code}` : 'Chat';
}

/**
 * Shows who we talk to (`peer`, null while we are alone, and whether they are away), and the
 * large invite while nobody else is in the room.
 */
export function updateRoomBar(peer, peerAway) {
  const alone = peer === null;
  let text = 'Waiting for someone to join';
  if (!alone) text = peerAway ? `${peer}: connection lost — waiting…` : `with ${peer}`;
  $('room-peer').textContent = text;
  $('room-peer').dataset.away = String(!alone && peerAway);
  $('invite').hidden = !alone;
  $('copy-code-small').hidden = alone; // The invite panel has its own, larger copy button.
  if (alone) scrollToEnd();
}

/**
 * The invite link of room `code`. An encrypted room's key goes in the fragment, which
 * browsers never send to the server (docs/security.md).
 */
function inviteLink(code, linkKey) {
  const link = `${location.origin}/?room=${encodeURIComponent(code)}`;
  return linkKey ? `${link}#key=${linkKey}` : link;
}

/**
 * Shows whether the room is end-to-end encrypted: `mode` is `'plain'`, `'on'` (the lock in
 * the room bar: this page holds the key), `'no-key'` (joined with the code alone) or
 * `'unsupported'` (this browser offers the page no encryption). In the last two, a notice says
 * so plainly and the composer is disabled, so nothing can be sent as plaintext.
 */
export function showEncryption(mode) {
  $('room-lock').hidden = mode !== 'on';
  const missing = MISSING_KEY_TEXT[mode];
  $('e2e-missing').textContent = missing || '';
  $('e2e-missing').hidden = !missing;
  const failed = FAILED_TEXT[mode];
  $('e2e-failed').textContent = failed || '';
  $('e2e-failed').hidden = !failed;
  const input = $('message-input');
  input.disabled = Boolean(missing || failed);
  $('send').disabled = Boolean(missing || failed);
  input.placeholder = missing
    ? 'You need the invite link to write here'
    : failed
      ? 'Nothing more can be sent in this room'
      : 'Write a message…';
  // A browser's spell-checker may send what is typed to a service to check it: not in a room
  // whose point is that nobody else reads it. Nor should the browser keep it for autofill.
  const plain = mode === 'plain';
  input.spellcheck = plain;
  input.setAttribute('autocomplete', plain ? 'on' : 'off');
}

/**
 * Where the page stands on end-to-end encryption, for tests and style sheets alike:
 * `<html data-e2e>` is `none`, `verifying`, `verified` or `failed` (see main.js, `state.e2e`).
 */
export function showE2eState(value) {
  document.documentElement.dataset.e2e = value;
}

/**
 * Shows the safety number of the handshake (three groups of four digits, the same on both
 * pages; for two people to compare by voice), or hides it (null).
 */
export function showSafetyNumber(number) {
  $('safety').hidden = number === null;
  $('safety-number').textContent = number || '';
}

// ---------------------------------------------------------------------------------------
// The conversation
// ---------------------------------------------------------------------------------------

/** Empties the conversation (and the typing indicator). */
export function clearConversation() {
  $('messages').replaceChildren();
  delete $('messages').dataset.room;
  hidePeerTyping();
}

/** Creates an element with a class and, optionally, text (always as text, never as HTML). */
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Appends one `chat` message: ours (`own`) on the right, the peer's on the left. Its text is
 * `message.content`, or, with `sealed` (`'opening'`, `'locked'` or `'unverified'`), a sentence
 * saying why it is not shown; `revealChat` or `sealChat` change that later.
 */
export function addChat(message, own, sealed) {
  const item = chatItem(message.from, own);
  item.dataset.id = String(message.id);
  const meta = element('p', 'msg__meta');
  meta.append(element('span', 'msg__from', message.from), formatTime(message.timestamp));
  const text = sealed
    ? element('p', 'msg__text msg__text--sealed', SEALED_TEXT[sealed])
    : element('p', 'msg__text', message.content);
  if (sealed) text.dataset.sealed = sealed;
  item.append(meta, text);
  appendToConversation(item, own);
}

/**
 * Appends one of our messages that is on its way: sent, but not confirmed by the server yet
 * (`clientMsgId` is the id it was sent with). It looks lighter and says "Sending…" where the
 * time goes, and stays at the end of the conversation, below whatever is confirmed meanwhile,
 * until `removePendingChat` takes it away.
 */
export function addPendingChat(clientMsgId, from, content) {
  const item = chatItem(from, true);
  item.classList.add('msg--pending');
  item.dataset.pending = clientMsgId;
  const meta = element('p', 'msg__meta');
  meta.append(element('span', 'msg__from', from), element('span', 'msg__sending', 'Sending…'));
  item.append(meta, element('p', 'msg__text', content));
  // After the messages on their way before it: they went out in this order.
  $('messages').append(item);
  groupWithPrevious(item);
  scrollToEnd();
}

/**
 * Takes away the message on its way sent with `clientMsgId`, if it is shown: confirmed (it
 * comes back as an ordinary message) or given up.
 */
export function removePendingChat(clientMsgId) {
  const item = [...$('messages').children].find((li) => li.dataset.pending === clientMsgId);
  if (!item) return;
  const next = item.nextElementSibling;
  item.remove();
  if (next) groupWithPrevious(next);
}

/** A conversation item for a chat message from `from`: ours (`own`) on the right. */
function chatItem(from, own) {
  const item = element('li', own ? 'msg msg--own' : 'msg msg--peer');
  item.dataset.from = from;
  return item;
}

/** Consecutive messages from one person read as a group: their name is shown once. */
function groupWithPrevious(item) {
  if (!item.classList.contains('msg')) return; // An event line.
  const previous = item.previousElementSibling;
  item.classList.toggle('msg--cont', previous !== null && previous.dataset.from === item.dataset.from);
}

/** The text element of the message with `id` in the conversation, if it is there. */
function chatText(id) {
  const item = [...$('messages').children].find((li) => li.dataset.id === String(id));
  return item ? item.querySelector('.msg__text') : null;
}

/** Shows the opened text of the encrypted message `id` (as text, as always). */
export function revealChat(id, content) {
  const text = chatText(id);
  if (!text) return;
  // The text may be longer than what stood in for it: keep a reader at the bottom there.
  const scroller = $('conversation');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  text.textContent = content;
  text.classList.remove('msg__text--sealed');
  delete text.dataset.sealed;
  if (atBottom) scrollToEnd();
}

/**
 * Marks the message `id` as arrived out of order: the server held it back, and it came after
 * messages its sender wrote later.
 */
export function markLate(id) {
  const text = chatText(id);
  if (!text) return;
  text.parentElement.classList.add('msg--late');
  text.after(element('p', 'msg__late', 'Arrived late, out of order'));
}

/** Says why the encrypted message `id` is not shown (see `addChat`). */
export function sealChat(id, sealed) {
  const text = chatText(id);
  if (!text) return;
  text.textContent = SEALED_TEXT[sealed];
  text.classList.add('msg__text--sealed');
  text.dataset.sealed = sealed;
}

/** Appends a line about what happened in the room (joins, leaves, connection). */
export function addEvent(text) {
  appendToConversation(element('li', 'event', text), true);
}

/** A `<time>` element in the reader's local time, with the full date on hover. */
function formatTime(timestamp) {
  const date = new Date(timestamp);
  const time = element('time', 'msg__time');
  time.dateTime = date.toISOString();
  time.textContent = date.toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  time.title = date.toLocaleString();
  return time;
}

/**
 * Adds an item and scrolls to it when the reader was already at the bottom (or `force`):
 * someone scrolled up to reread something should not be yanked down by every new line.
 * Our messages still on their way stay last: the item goes above them, since whatever is
 * confirmed or happens meanwhile comes before them in the conversation.
 */
function appendToConversation(item, force) {
  const scroller = $('conversation');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  const firstPending = $('messages').querySelector('.msg--pending');
  $('messages').insertBefore(item, firstPending); // Appends when there is none (null).
  groupWithPrevious(item);
  if (firstPending) groupWithPrevious(firstPending);
  if (force || atBottom) scrollToEnd();
}

function scrollToEnd() {
  $('conversation').scrollTop = $('conversation').scrollHeight;
}

/** Puts "Seen" under our last message with an id up to `upTo`, and nowhere else. */
export function showSeen(upTo) {
  const scroller = $('conversation');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  $('messages').querySelector('.msg__seen')?.remove();
  const read = [...$('messages').querySelectorAll('.msg--own:not(.msg--pending)')]
    .reverse()
    .find((item) => Number(item.dataset.id) <= upTo);
  if (read) read.append(element('p', 'msg__seen', 'Seen'));
  if (atBottom) scrollToEnd();
}

/** Whether the person can see the conversation right now: tab shown and window focused. */
export function conversationVisible() {
  return document.visibilityState === 'visible' && document.hasFocus() && currentView() === 'room';
}

export function showPeerTyping(name) {
  $('typing').textContent = `${name} is typing…`;
  $('typing').hidden = false;
}

export function hidePeerTyping() {
  $('typing').hidden = true;
  $('typing').textContent = '';
}

// ---------------------------------------------------------------------------------------
// The composer
// ---------------------------------------------------------------------------------------

/** What is written in the message input. */
export function messageText() {
  return $('message-input').value;
}

/** Replaces what is written in the message input (the counter follows). */
export function setMessageText(text) {
  $('message-input').value = text;
  updateCharCount();
}

export function focusMessage() {
  $('message-input').focus();
}

/** Shows "4100 / 4096" once a message nears the limit. */
export function updateCharCount() {
  const count = [...$('message-input').value].length; // Characters, not UTF-16 units.
  const counter = $('char-count');
  counter.textContent = count >= COUNTER_FROM_CHARS ? `${count} / ${MAX_MESSAGE_CHARS}` : '';
  counter.classList.toggle('char-count--over', count > MAX_MESSAGE_CHARS);
}

// ---------------------------------------------------------------------------------------
// Copying the code and the invite link
// ---------------------------------------------------------------------------------------

/**
 * Copies `text` and confirms on `button`. The clipboard API exists only on secure pages
 * (https or localhost); elsewhere we select `fallbackInput` so Ctrl+C / long-press works.
 */
export async function copy(text, button, fallbackInput) {
  try {
    await navigator.clipboard.writeText(text);
    flash(button, 'Copied');
  } catch {
    if (fallbackInput) {
      fallbackInput.focus();
      fallbackInput.select();
    }
    flash(button, 'Press Ctrl+C');
  }
}

/** Shows `text` on a button for a moment, then its own label again. */
function flash(button, text) {
  if (!button.dataset.label) button.dataset.label = button.textContent;
  button.textContent = text;
  clearTimeout(button.flashTimer);
  button.flashTimer = setTimeout(() => {
    button.textContent = button.dataset.label;
  }, FLASH_MS);
}
