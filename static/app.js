// The browser client of chat protocol v1 (see docs/protocol.md).
//
// One WebSocket to /ws carries JSON messages both ways. The page has three views:
// choose a name, the lobby (create or join a room) and the room (the conversation).
// Every piece of text that comes from a person (names, messages, codes) goes into the
// page through `textContent`, never as HTML, so `<b>` in a message shows as `<b>`.
'use strict';

/** Longest chat message the server accepts, in characters (Unicode scalar values). */
const MAX_MESSAGE_CHARS = 4096;
/** Show the character counter once a message gets this long. */
const COUNTER_FROM_CHARS = 3800;
/**
 * While the user keeps typing we repeat `typing` this often. The server treats a repeated
 * `typing` as "restart my timer" (its timeout is 5 s by default), so a refresh every 2 s
 * keeps the indicator alive without sending a message per keystroke.
 */
const TYPING_REFRESH_MS = 2000;
/** After this long without a keystroke we tell the peer we stopped typing. */
const TYPING_IDLE_MS = 3000;
/** How long a "Copied" confirmation stays on a button. */
const FLASH_MS = 2000;

/** A sentence for people for every error code of the protocol. */
const ERROR_TEXT = {
  INVALID_MESSAGE: 'The server did not understand that request. Reloading the page should fix it.',
  USERNAME_REQUIRED: 'Choose a name first.',
  INVALID_USERNAME: 'A name has 1 to 32 characters and no control characters.',
  USERNAME_TAKEN: 'The person in that room already uses this name. Change your name and try again.',
  ALREADY_IN_ROOM: 'You are already in a room. Leave it first.',
  NOT_IN_ROOM: 'You are not in a room any more.',
  INVALID_ROOM_CODE: 'A room code is 6 letters and digits, like K7M2QX.',
  ROOM_NOT_FOUND: 'There is no room with that code. It closes when everyone has left.',
  ROOM_FULL: 'That room already has two people in it.',
  EMPTY_MESSAGE: 'Write something before sending.',
  MESSAGE_TOO_LONG: `That message is too long: the limit is ${MAX_MESSAGE_CHARS} characters.`,
  INTERNAL_ERROR: 'Something went wrong on the server. Please try again.',
};

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

/** Everything the page knows. Changed only by the handlers below. */
const state = {
  /** The open WebSocket, or null while disconnected. */
  socket: null,
  /** Our name as the server stored it (trimmed), once `username_set` arrived. */
  name: null,
  /** The code of the room we are in, or null. */
  roomCode: null,
  /** The other member's name, or null while we are alone in the room. */
  peer: null,
  /** A room to join as soon as our name is set: from an invite link or after a reconnect. */
  pendingJoin: null,
  /**
   * The slot of the last request we sent. The server answers requests in order, and the
   * page sends one request at a time, so an `error` belongs to this request.
   */
  lastSlot: 'name',
  /** The text of the last chat we sent, to give it back if the server refuses it. */
  lastSent: null,
  /** When we last sent `typing`, in ms; 0 while the peer believes we are idle. */
  typingSentAt: 0,
  /** Fires `stop_typing` after TYPING_IDLE_MS without input. */
  idleTimer: null,
  /** Whether the current socket ever opened: "lost" versus "cannot reach" when it closes. */
  wasOpen: false,
  /** Whether `pendingJoin` is the room a lost connection took us out of. */
  rejoining: false,
};

// ---------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------

/** Opens the WebSocket on the page's own host, `wss:` when the page came over https. */
function connect() {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  state.wasOpen = false;
  setConnectionStatus('connecting');
  socket.addEventListener('open', onOpen);
  socket.addEventListener('message', onSocketMessage);
  socket.addEventListener('close', onClose);
}

function onOpen() {
  state.wasOpen = true;
  setConnectionStatus('connected');
  $('conn-lost').hidden = true;
  // After a reconnect the server knows nothing about us: tell it our name again.
  // `onUsernameSet` then rejoins the room we were in, if any.
  if (state.name) {
    send({ type: 'set_username', username: state.name }, 'name');
  }
}

function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return; // The server only sends JSON; ignore anything else rather than break the page.
  }
  const handler = HANDLERS[message.type];
  if (handler) handler(message);
}

/** The socket closed: the server went away, the network dropped, or the server shut down. */
function onClose() {
  state.socket = null;
  forgetTyping();
  setConnectionStatus('offline');
  $('conn-lost-text').textContent = state.wasOpen
    ? 'The connection to the server was lost.'
    : 'Cannot reach the server right now.';
  $('conn-lost').hidden = false;
  $('reconnect').disabled = false;
  if (state.roomCode) {
    addEvent('Connection lost. Messages cannot be sent until you reconnect.');
    hidePeerTyping();
    // The server removes a disconnected member from its room; try to get back in on reconnect.
    state.pendingJoin = state.roomCode;
    state.rejoining = true;
    state.roomCode = null;
  }
}

function reconnect() {
  $('reconnect').disabled = true;
  $('conn-lost-text').textContent = 'Reconnecting…';
  connect();
}

/** Sends one message; `slot` names the control whose errors the reply may carry. */
function send(message, slot) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) {
    if (slot) showError(slot, 'You are not connected to the server right now.');
    return false;
  }
  if (slot) state.lastSlot = slot;
  state.socket.send(JSON.stringify(message));
  return true;
}

function setConnectionStatus(status) {
  const text = { connecting: 'Connecting…', connected: 'Connected', offline: 'Offline' };
  $('conn-status').dataset.state = status;
  $('conn-status').textContent = text[status];
}

// ---------------------------------------------------------------------------------------
// Messages from the server
// ---------------------------------------------------------------------------------------

const HANDLERS = {
  connected: () => {},
  username_set: onUsernameSet,
  room_created: (m) => enterRoom(m.room_code, null),
  room_joined: onRoomJoined,
  peer_joined: onPeerJoined,
  chat: onChat,
  typing: (m) => showPeerTyping(m.username),
  stop_typing: hidePeerTyping,
  peer_left: onPeerLeft,
  room_left: onRoomLeft,
  error: onError,
};

function onUsernameSet(message) {
  state.name = message.username;
  rememberName(message.username);
  $('lobby-name').textContent = message.username;
  // An invite is used once; a later name change is just a name change.
  $('invite-note').hidden = true;
  $('intro-note').hidden = false;
  $('name-submit').textContent = 'Continue';
  if (state.pendingJoin) {
    // An invite link or a lost connection: go straight (back) into that room.
    const code = state.pendingJoin;
    state.pendingJoin = null;
    if (state.rejoining) {
      // Shown in the lobby only if getting back in fails (entering the room clears it).
      $('lobby-note').textContent = `Reconnected. You were in room ${code} when the connection dropped.`;
      state.rejoining = false;
    }
    $('join-code').value = code;
    send({ type: 'join_room', room_code: code }, 'join');
  } else {
    showView('lobby');
  }
}

function onRoomJoined(message) {
  const rejoined = $('messages').dataset.room === message.room_code;
  enterRoom(message.room_code, message.peer);
  if (rejoined) {
    addEvent(`Reconnected. You are back with ${message.peer}.`);
    return;
  }
  if (message.history.length > 0) {
    addEvent('Earlier in this room');
    message.history.forEach(addChat);
  }
  addEvent(`You joined ${message.peer} in room ${message.room_code}.`);
}

function onPeerJoined(message) {
  state.peer = message.username;
  updateRoomBar();
  addEvent(`${message.username} joined.`);
}

function onChat(message) {
  if (message.from === state.name) {
    state.lastSent = null; // Accepted: nothing to give back any more.
  } else {
    // The server sends `stop_typing` before the chat that ends typing; hide it anyway in
    // case the order ever changes, a typing indicator above the message it became is odd.
    hidePeerTyping();
  }
  addChat(message);
}

function onPeerLeft(message) {
  hidePeerTyping();
  state.peer = null;
  updateRoomBar();
  const how = message.reason === 'disconnected' ? 'lost their connection' : 'left the room';
  addEvent(`${message.username} ${how}. The room stays open under the same code.`);
}

function onRoomLeft(message) {
  state.roomCode = null;
  state.peer = null;
  clearConversation();
  document.title = 'Chat';
  $('lobby-note').textContent = `You left room ${message.room_code}.`;
  showView('lobby');
  $('create-room').focus();
}

function onError(message) {
  const text = ERROR_TEXT[message.code] || message.message || 'Something went wrong.';
  // Without a name the lobby makes no sense: send the user back to the name form.
  const slot = message.code === 'USERNAME_REQUIRED' ? 'name' : state.lastSlot;
  showError(slot, text);
  if (slot === 'composer' && state.lastSent !== null && $('message-input').value === '') {
    // The input was cleared when the message went out; give the refused text back.
    $('message-input').value = state.lastSent;
    updateCharCount();
  }
  state.lastSent = null;
}

// ---------------------------------------------------------------------------------------
// Views
// ---------------------------------------------------------------------------------------

/** Shows one of the three views and puts the keyboard focus where the user will start. */
function showView(name) {
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

function currentView() {
  return ['name', 'lobby', 'room'].find((view) => !$(`view-${view}`).hidden);
}

/** Shows `text` under the control of `slot`, marks that control invalid and focuses it. */
function showError(slot, text) {
  const { error, field, view } = SLOTS[slot];
  if (currentView() !== view && !(view === 'room' && !state.roomCode)) showView(view);
  $(error).textContent = text;
  $(field).setAttribute('aria-invalid', 'true');
  $(field).focus();
}

function clearError(slot) {
  const { error, field } = SLOTS[slot];
  $(error).textContent = '';
  $(field).removeAttribute('aria-invalid');
}

/** Switches to the room view for `code`; `peer` is null while we wait alone. */
function enterRoom(code, peer) {
  // Keep the conversation on screen when we come back to the same room after a reconnect.
  if ($('messages').dataset.room !== code) clearConversation();
  $('messages').dataset.room = code;
  state.roomCode = code;
  state.peer = peer;
  $('room-code').textContent = code;
  $('room-code-big').textContent = code;
  $('invite-link').value = inviteLink(code);
  $('lobby-note').textContent = '';
  clearError('create');
  clearError('join');
  document.title = `Chat · ${code}`;
  updateRoomBar();
  showView('room');
}

/** Shows who we talk to, and the large invite while nobody else is in the room. */
function updateRoomBar() {
  const alone = state.peer === null;
  $('room-peer').textContent = alone ? 'Waiting for someone to join' : `with ${state.peer}`;
  $('invite').hidden = !alone;
  $('copy-code-small').hidden = alone; // The invite panel has its own, larger copy button.
  if (alone) scrollToEnd();
}

function clearConversation() {
  $('messages').replaceChildren();
  delete $('messages').dataset.room;
  hidePeerTyping();
}

function inviteLink(code) {
  return `${location.origin}/?room=${encodeURIComponent(code)}`;
}

// ---------------------------------------------------------------------------------------
// The conversation
// ---------------------------------------------------------------------------------------

/** Creates an element with a class and, optionally, text (always as text, never as HTML). */
function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Appends one `chat` message: ours on the right, the peer's on the left. */
function addChat(message) {
  const list = $('messages');
  const own = message.from === state.name;
  const item = element('li', own ? 'msg msg--own' : 'msg msg--peer');
  item.dataset.from = message.from;
  // Consecutive messages from one person read as a group: their name is shown once.
  const previous = list.lastElementChild;
  if (previous && previous.dataset.from === message.from) item.classList.add('msg--cont');

  const meta = element('p', 'msg__meta');
  meta.append(element('span', 'msg__from', message.from), formatTime(message.timestamp));
  item.append(meta, element('p', 'msg__text', message.content));
  appendToConversation(item, own);
}

/** Appends a line about what happened in the room (joins, leaves, connection). */
function addEvent(text) {
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
 */
function appendToConversation(item, force) {
  const scroller = $('conversation');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  $('messages').append(item);
  if (force || atBottom) scrollToEnd();
}

function scrollToEnd() {
  $('conversation').scrollTop = $('conversation').scrollHeight;
}

function showPeerTyping(name) {
  $('typing').textContent = `${name} is typing…`;
  $('typing').hidden = false;
}

function hidePeerTyping() {
  $('typing').hidden = true;
  $('typing').textContent = '';
}

// ---------------------------------------------------------------------------------------
// The composer and our own typing state
// ---------------------------------------------------------------------------------------

function sendChat() {
  const input = $('message-input');
  const content = input.value;
  clearError('composer');
  if (!send({ type: 'chat', content }, 'composer')) return;
  state.lastSent = content;
  input.value = '';
  updateCharCount();
  // The server ends our typing state itself when a chat arrives: no `stop_typing` needed.
  forgetTyping();
  input.focus();
}

/** Called on every change of the message input. */
function onComposerInput() {
  updateCharCount();
  clearError('composer');
  if ($('message-input').value === '') {
    stopTyping();
    return;
  }
  const now = Date.now();
  if (now - state.typingSentAt >= TYPING_REFRESH_MS) {
    send({ type: 'typing' });
    state.typingSentAt = now;
  }
  clearTimeout(state.idleTimer);
  state.idleTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
}

/** Tells the peer we stopped typing, if it thinks we are typing. */
function stopTyping() {
  clearTimeout(state.idleTimer);
  if (state.typingSentAt !== 0) {
    send({ type: 'stop_typing' });
    state.typingSentAt = 0;
  }
}

/** Drops our typing state without telling the server (it already knows). */
function forgetTyping() {
  clearTimeout(state.idleTimer);
  state.typingSentAt = 0;
}

/** Shows "4100 / 4096" once a message nears the limit. */
function updateCharCount() {
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
async function copy(text, button, fallbackInput) {
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

// ---------------------------------------------------------------------------------------
// Names and codes typed by the user
// ---------------------------------------------------------------------------------------

/** Accepts a bare code or a whole invite link pasted into the code field. */
function codeFromInput(value) {
  const match = /[?&]room=([^&#\s]*)/.exec(value);
  return (match ? match[1] : value).trim();
}

/** The room code of an invite link (`/?room=CODE`), if the page was opened from one. */
function inviteCodeFromUrl() {
  const code = new URLSearchParams(location.search).get('room');
  return code ? code.trim().toUpperCase() : null;
}

/** The name used last time, to prefill the form. Storage may be blocked: then no prefill. */
function rememberedName() {
  try {
    return localStorage.getItem('chat.name') || '';
  } catch {
    return '';
  }
}

function rememberName(name) {
  try {
    localStorage.setItem('chat.name', name);
  } catch {
    // Private mode or storage disabled: the name just is not prefilled next time.
  }
}

// ---------------------------------------------------------------------------------------
// Wiring
// ---------------------------------------------------------------------------------------

function onNameSubmit(event) {
  event.preventDefault();
  clearError('name');
  send({ type: 'set_username', username: $('name-input').value }, 'name');
}

function onJoinSubmit(event) {
  event.preventDefault();
  clearError('join');
  const code = codeFromInput($('join-code').value);
  $('join-code').value = code;
  send({ type: 'join_room', room_code: code }, 'join');
}

function onCreateClick() {
  clearError('create');
  send({ type: 'create_room' }, 'create');
}

function onLeaveClick() {
  clearError('room');
  stopTyping();
  send({ type: 'leave_room' }, 'room');
}

function onChangeNameClick() {
  $('name-input').value = state.name || '';
  showView('name');
  $('name-input').select();
}

/** Enter sends; Shift+Enter makes a new line; Enter that confirms an IME composition does neither. */
function onComposerKeydown(event) {
  if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendChat();
  }
}

function init() {
  $('name-form').addEventListener('submit', onNameSubmit);
  $('name-input').addEventListener('input', () => clearError('name'));
  $('change-name').addEventListener('click', onChangeNameClick);
  $('create-room').addEventListener('click', onCreateClick);
  $('join-form').addEventListener('submit', onJoinSubmit);
  $('join-code').addEventListener('input', () => clearError('join'));
  $('leave').addEventListener('click', onLeaveClick);
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    sendChat();
  });
  $('message-input').addEventListener('keydown', onComposerKeydown);
  $('message-input').addEventListener('input', onComposerInput);
  $('copy-code').addEventListener('click', (e) => copy(state.roomCode, e.currentTarget, null));
  $('copy-code-small').addEventListener('click', (e) => copy(state.roomCode, e.currentTarget, null));
  $('copy-link').addEventListener('click', (e) =>
    copy($('invite-link').value, e.currentTarget, $('invite-link')));
  $('invite-link').addEventListener('focus', (e) => e.currentTarget.select());
  $('reconnect').addEventListener('click', reconnect);

  const invite = inviteCodeFromUrl();
  if (invite) {
    // Opened from an invite link: the join form is prefilled, and after choosing a name
    // the user lands directly in the room.
    state.pendingJoin = invite;
    $('join-code').value = invite;
    $('invite-code').textContent = invite;
    $('invite-note').hidden = false;
    $('intro-note').hidden = true;
    $('name-submit').textContent = 'Join the room';
  }
  $('name-input').value = rememberedName();
  showView('name');
  connect();
}

init();
