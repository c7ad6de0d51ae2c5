// The browser client of chat protocol v1 (see docs/protocol.md).
//
// One WebSocket to /ws carries JSON messages both ways. The page has three views:
// choose a name, the lobby (create or join a room) and the room (the conversation).
// When the connection drops, the page reconnects by itself and resumes its session, so
// the room and every message survive a network change (issue 6).
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
/** The first reconnect waits about this long; each failed attempt doubles it... */
const RECONNECT_FIRST_MS = 500;
/** ...up to this. Then a server that is down for long gets one attempt every ~10 s per tab. */
const RECONNECT_MAX_MS = 10000;
/**
 * Each delay is scaled by a random factor between 1 - JITTER and 1 + JITTER, so that the
 * tabs a server restart disconnected all at once do not all come back at the same instant.
 */
const RECONNECT_JITTER = 0.5;
/**
 * A `read` receipt waits this long before it goes out, so a burst of messages (a replay
 * after a reconnect, say) costs one receipt, not one per message: every message counts
 * against the server's rate limit.
 */
const READ_DELAY_MS = 300;
/** Close code of a connection whose session another connection resumed (another tab). */
const CLOSE_RESUMED_ELSEWHERE = 4000;
/** Close code "policy violation": the server closed us on purpose (no name for too long). */
const CLOSE_POLICY = 1008;

/** Said when the server no longer holds our session and the page had to start over. */
const NOT_RESUMED =
  'Your session could not be resumed (away too long, or the server restarted), so you started afresh.';

/** A sentence for people for every error code of the protocol. */
const ERROR_TEXT = {
  INVALID_MESSAGE: 'The server did not understand that request. Reloading the page should fix it.',
  USERNAME_REQUIRED: 'Choose a name first.',
  INVALID_USERNAME: 'A name has 1 to 32 characters, at least one of them visible, and no control or text-direction characters.',
  USERNAME_TAKEN: 'The person in that room already uses this name. Change your name and try again.',
  ALREADY_IN_ROOM: 'You are already in a room. Leave it first.',
  NOT_IN_ROOM: 'You are not in a room any more.',
  INVALID_ROOM_CODE: 'A room code is 6 letters and digits, like K7M2QX.',
  ROOM_NOT_FOUND: 'There is no room with that code. It closes when everyone has left.',
  ROOM_FULL: 'That room already has two people in it.',
  EMPTY_MESSAGE: 'Write something before sending.',
  MESSAGE_TOO_LONG: `That message is too long: the limit is ${MAX_MESSAGE_CHARS} characters.`,
  INTERNAL_ERROR: 'Something went wrong on the server. Please try again.',
  RATE_LIMITED: 'That was too fast for the server. Wait a moment and try again.',
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
  /** Whether `pendingJoin` is the room we were in when our session expired. */
  rejoining: false,
  /**
   * The secret from `connected` that lets a later connection take over our session (name,
   * room, seat) with `resume`. Also kept in sessionStorage, so a reload resumes too.
   */
  sessionToken: null,
  /** Whether this connection sent `resume` and awaits `resumed` or `SESSION_EXPIRED`. */
  resuming: false,
  /** The token this connection's `connected` offered: ours if the resume fails. */
  freshToken: null,
  /** How many connection attempts in a row failed; the next delay grows with it. */
  attempts: 0,
  /** The pending automatic reconnect, or null. */
  reconnectTimer: null,
  /** Whether we are between losing a working connection and getting the session back. */
  outage: false,
  /**
   * The highest chat `id` shown for the current room. It is the `last_id` of a `resume`,
   * and since ids only grow within a room, a chat at or below it is already on screen.
   */
  lastId: 0,
  /** The highest `id` of a message from the peer shown in the current room. */
  lastPeerId: 0,
  /** The highest `up_to` we sent in a `read` receipt for the current room. */
  readSent: 0,
  /** The pending `read` receipt (see READ_DELAY_MS), or null. */
  readTimer: null,
  /** The highest `up_to` of the peer's `read` receipts: "Seen" goes under our message there. */
  peerReadUpTo: 0,
  /** Whether the peer's connection dropped and the server holds its seat, waiting for it. */
  peerAway: false,
  /**
   * How many `chat` frames of a replay are still to come after `resumed` (its `more`: the
   * rest of `missed`, which did not fit in one frame). Until they are in, our last message
   * may still be among them.
   */
  replayPending: 0,
};

// ---------------------------------------------------------------------------------------
// The connection
// ---------------------------------------------------------------------------------------

/** Opens the WebSocket on the page's own host, `wss:` when the page came over https. */
function connect() {
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  state.socket = socket;
  state.wasOpen = false;
  setConnectionStatus(state.sessionToken ? 'reconnecting' : 'connecting');
  socket.addEventListener('open', onOpen);
  socket.addEventListener('message', onSocketMessage);
  socket.addEventListener('close', onClose);
}

function onOpen() {
  state.wasOpen = true;
  if (state.sessionToken) {
    // `resume` is only accepted as the very first message of a connection, so it goes out
    // before anything else, even before the server's `connected` greeting has arrived.
    state.resuming = true;
    state.socket.send(JSON.stringify({
      type: 'resume',
      session_token: state.sessionToken,
      last_id: state.lastId,
    }));
  } else {
    connectionReady();
    // A server that gives out no session token (protocol v1 only) forgets us with the
    // connection: tell it our name again, and `onUsernameSet` rejoins our room, if any.
    if (state.name) startAfresh();
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

/**
 * The socket closed: the network dropped, the server went away or restarted, or another
 * tab took our session over. Only the last one, and a close the server made on purpose,
 * are final; everything else is retried by itself.
 */
function onClose(event) {
  const wasOpen = state.wasOpen;
  state.socket = null;
  state.resuming = false;
  forgetTyping();
  hidePeerTyping();
  clearTimeout(state.readTimer);
  state.readTimer = null;

  if (event.code === CLOSE_RESUMED_ELSEWHERE) {
    // The other tab now holds the session; coming back by ourselves would take it away from
    // there, which would then come back here, and so on. The user decides.
    setConnectionStatus('offline');
    showBanner('This chat was opened elsewhere (another tab or window).', 'Use it here');
    if (state.roomCode) addEvent('This chat was opened elsewhere, so this page stopped.');
    return;
  }
  if (event.code === CLOSE_POLICY) {
    // Closed on purpose (for instance no name was chosen in time): trying again by
    // ourselves would only repeat it.
    setConnectionStatus('offline');
    showBanner(event.reason || 'The server closed the connection.', 'Reconnect');
    return;
  }

  if (wasOpen && !state.outage) {
    state.outage = true;
    if (state.roomCode) addEvent('Connection lost. Reconnecting…');
  }
  setConnectionStatus('reconnecting');
  showBanner(
    state.outage
      ? 'The connection to the server was lost. Reconnecting…'
      : 'Cannot reach the server right now. Trying again…',
    'Retry now',
  );
  state.reconnectTimer = setTimeout(connect, reconnectDelay(state.attempts));
  state.attempts += 1;
}

/** How long to wait before attempt number `attempt` (0 first): exponential, with jitter. */
function reconnectDelay(attempt) {
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** attempt);
  return base * (1 - RECONNECT_JITTER + Math.random() * 2 * RECONNECT_JITTER);
}

/** "Retry now", "Use it here", or the device coming back online: connect without waiting. */
function reconnectNow() {
  if (state.socket) return; // An attempt is already under way.
  $('reconnect').disabled = true;
  connect();
}

/** The connection works and the server knows who we are: hide every sign of trouble. */
function connectionReady() {
  state.attempts = 0;
  state.outage = false;
  setConnectionStatus('connected');
  $('conn-lost').hidden = true;
}

function showBanner(text, button) {
  $('conn-lost-text').textContent = text;
  $('reconnect').textContent = button;
  $('reconnect').disabled = false;
  $('conn-lost').hidden = false;
}

/**
 * Our session is gone (the server restarted, or we were away longer than its grace period):
 * start over as a new client, with our name, and back into our room if it still exists.
 */
function startAfresh() {
  if (state.roomCode) {
    state.pendingJoin = state.roomCode;
    state.rejoining = true;
    state.roomCode = null;
    state.peer = null;
    state.peerAway = false;
  }
  if (state.name) {
    send({ type: 'set_username', username: state.name }, 'name');
  } else {
    showView('name');
  }
}

/** Sends one message; `slot` names the control whose errors the reply may carry. */
function send(message, slot) {
  // While a `resume` is unanswered we do not know yet whether we are still in our room.
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN || state.resuming) {
    if (slot) showError(slot, 'Not connected right now. Reconnecting… then try again.');
    return false;
  }
  if (slot) state.lastSlot = slot;
  state.socket.send(JSON.stringify(message));
  return true;
}

function setConnectionStatus(status) {
  const text = {
    connecting: 'Connecting…',
    reconnecting: 'Reconnecting…',
    connected: 'Connected',
    offline: 'Offline',
  };
  $('conn-status').dataset.state = status;
  $('conn-status').textContent = text[status];
}

// ---------------------------------------------------------------------------------------
// Messages from the server
// ---------------------------------------------------------------------------------------

const HANDLERS = {
  connected: onConnected,
  resumed: onResumed,
  username_set: onUsernameSet,
  room_created: (m) => enterRoom(m.room_code, null),
  room_joined: onRoomJoined,
  peer_joined: onPeerJoined,
  chat: onChat,
  typing: (m) => showPeerTyping(m.username),
  stop_typing: hidePeerTyping,
  peer_left: onPeerLeft,
  peer_disconnected: onPeerDisconnected,
  peer_reconnected: onPeerReconnected,
  read: onRead,
  room_left: onRoomLeft,
  error: onError,
};

function onConnected(message) {
  if (!message.session_token) return; // A protocol v1 server: no resuming.
  // While resuming, this connection's own new session is only a fallback: the server keeps
  // our old token on a successful resume.
  if (state.resuming) state.freshToken = message.session_token;
  else rememberSession(message.session_token);
}

/** Our session is back: the same name, room and seat, plus what was said meanwhile. */
function onResumed(message) {
  state.resuming = false;
  state.freshToken = null;
  connectionReady();
  state.name = message.username;
  if (message.username) $('lobby-name').textContent = message.username;

  if (message.room_code) {
    const sameRoom = $('messages').dataset.room === message.room_code;
    const peerBefore = state.peer;
    enterRoom(message.room_code, message.peer);
    if (sameRoom) {
      addEvent('Reconnected.');
      // The room may have changed while we were away: say so before what was said.
      if (peerBefore !== null && peerBefore !== message.peer) {
        addEvent(`${peerBefore} left while you were away.`);
      }
      if (message.peer !== null && peerBefore !== message.peer) {
        addEvent(`${message.peer} joined while you were away.`);
      }
    } else if (message.missed.length > 0) {
      addEvent('Earlier in this room'); // A reload: the page starts empty.
    }
    // Messages the server no longer had (its storage bounds): say so, rather than let the
    // conversation look complete.
    if (message.lost > 0) {
      const what = message.lost === 1 ? '1 earlier message' : `${message.lost} earlier messages`;
      addEvent(`${what} could not be recovered.`);
    }
    // Handled like live messages (our own confirm what we sent); `addChat` skips what is
    // already on screen, so nothing shows twice. The rest, if any, follows as `chat` frames.
    message.missed.forEach(onChat);
    state.replayPending = message.more || 0;
    state.peerAway = message.peer !== null && !message.peer_connected;
    updateRoomBar();
    if (state.peerAway) addEvent(peerAwayText(message.peer));
    if (state.replayPending === 0) replayDone();
    return;
  }
  if ($('messages').dataset.room) {
    $('lobby-note').textContent = `You are no longer in room ${$('messages').dataset.room}.`;
  }
  state.roomCode = null;
  state.peer = null;
  clearConversation();
  document.title = 'Chat';
  if (!message.username) showView('name');
  else if (currentView() !== 'name') showView('lobby');
}

/** Every missed message is in: what was not among them never reached the server. */
function replayDone() {
  giveBackUnsentMessage();
  scheduleRead();
}

/**
 * The message we sent last never came back as a `chat`, not even among the missed ones:
 * the connection dropped before the server got it. Put it back so it is not lost silently.
 */
function giveBackUnsentMessage() {
  if (state.lastSent === null) return;
  if ($('message-input').value === '') {
    $('message-input').value = state.lastSent;
    updateCharCount();
  }
  state.lastSent = null;
  showError('composer', 'Your last message did not get through before the connection dropped. Send it again?');
}

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
      $('lobby-note').textContent = `${NOT_RESUMED} You were in room ${code}.`;
    }
    $('join-code').value = code;
    send({ type: 'join_room', room_code: code }, 'join');
  } else {
    showView('lobby');
  }
}

function onRoomJoined(message) {
  const rejoined = state.rejoining && $('messages').dataset.room === message.room_code;
  state.rejoining = false;
  enterRoom(message.room_code, message.peer);
  if (rejoined) {
    // The server emptied the room's history when our seat went, so what it sends now was all
    // said after that; what was said before it is gone.
    addEvent(
      `${NOT_RESUMED} You are back with ${message.peer}; ` +
        'messages sent while you were away may be missing.',
    );
    message.history.forEach(onChat);
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
  state.peerAway = false;
  // A new person has read nothing yet; "Seen" moves on with their first receipt.
  state.peerReadUpTo = 0;
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
  if (state.replayPending > 0) {
    state.replayPending -= 1;
    if (state.replayPending === 0) replayDone();
  }
}

function onPeerLeft(message) {
  hidePeerTyping();
  state.peer = null;
  state.peerAway = false;
  updateRoomBar();
  const how = message.reason === 'disconnected' ? 'lost their connection' : 'left the room';
  addEvent(`${message.username} ${how}. The room stays open under the same code.`);
}

function onPeerDisconnected(message) {
  hidePeerTyping();
  state.peerAway = true;
  updateRoomBar();
  addEvent(peerAwayText(message.username));
}

function onPeerReconnected(message) {
  state.peerAway = false;
  updateRoomBar();
  addEvent(`${message.username} is back.`);
}

function peerAwayText(name) {
  return `${name}: connection lost — waiting for them to come back. Your messages will reach them.`;
}

/** The peer has seen our messages up to `up_to`. */
function onRead(message) {
  if (message.up_to <= state.peerReadUpTo) return;
  state.peerReadUpTo = message.up_to;
  showSeen();
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
  if (message.code === 'SESSION_EXPIRED') {
    // The connection carries on as a new client, with the session `connected` offered.
    state.resuming = false;
    rememberSession(state.freshToken);
    state.freshToken = null;
    connectionReady();
    startAfresh();
    return;
  }
  state.rejoining = false; // Whatever failed, a later join is the user's own again.
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
  let text = 'Waiting for someone to join';
  if (!alone) text = state.peerAway ? `${state.peer}: connection lost — waiting…` : `with ${state.peer}`;
  $('room-peer').textContent = text;
  $('room-peer').dataset.away = String(!alone && state.peerAway);
  $('invite').hidden = !alone;
  $('copy-code-small').hidden = alone; // The invite panel has its own, larger copy button.
  if (alone) scrollToEnd();
}

/** Empties the conversation, and forgets the ids and receipts that belonged to it. */
function clearConversation() {
  $('messages').replaceChildren();
  delete $('messages').dataset.room;
  hidePeerTyping();
  state.lastId = 0;
  state.lastPeerId = 0;
  state.readSent = 0;
  state.peerReadUpTo = 0;
  clearTimeout(state.readTimer);
  state.readTimer = null;
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

/**
 * Appends one `chat` message: ours on the right, the peer's on the left. A message already
 * on screen (ids only grow within a room) is skipped, so a replay never shows one twice.
 */
function addChat(message) {
  if (message.id <= state.lastId) return;
  state.lastId = message.id;
  const list = $('messages');
  const own = message.from === state.name;
  const item = element('li', own ? 'msg msg--own' : 'msg msg--peer');
  item.dataset.from = message.from;
  item.dataset.id = String(message.id);
  if (!own) {
    state.lastPeerId = message.id;
    scheduleRead();
  }
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

/** Puts "Seen" under our last message the peer has read, and nowhere else. */
function showSeen() {
  const scroller = $('conversation');
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 40;
  $('messages').querySelector('.msg__seen')?.remove();
  const read = [...$('messages').querySelectorAll('.msg--own')]
    .reverse()
    .find((item) => Number(item.dataset.id) <= state.peerReadUpTo);
  if (read) read.append(element('p', 'msg__seen', 'Seen'));
  if (atBottom) scrollToEnd();
}

// ---------------------------------------------------------------------------------------
// Read receipts
// ---------------------------------------------------------------------------------------

/** Whether the person can see the conversation right now: tab shown and window focused. */
function conversationVisible() {
  return document.visibilityState === 'visible' && document.hasFocus() && currentView() === 'room';
}

/** Sends a `read` receipt soon, if the peer wrote something we have not confirmed yet. */
function scheduleRead() {
  if (state.readTimer !== null || state.lastPeerId <= state.readSent) return;
  state.readTimer = setTimeout(sendRead, READ_DELAY_MS);
}

function sendRead() {
  state.readTimer = null;
  // Unseen messages stay unconfirmed; focus and visibilitychange schedule this again.
  if (!state.roomCode || !conversationVisible() || state.lastPeerId <= state.readSent) return;
  if (send({ type: 'read', up_to: state.lastPeerId })) state.readSent = state.lastPeerId;
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

/** The session token of this tab, kept across a reload; null if none or storage is blocked. */
function storedSession() {
  try {
    return sessionStorage.getItem('chat.session');
  } catch {
    return null;
  }
}

/**
 * Keeps `token` as our session, in memory and in sessionStorage: per tab, so two tabs are
 * two people, but a reload of this tab resumes where it was.
 */
function rememberSession(token) {
  state.sessionToken = token;
  try {
    if (token) sessionStorage.setItem('chat.session', token);
    else sessionStorage.removeItem('chat.session');
  } catch {
    // Storage blocked: a reload starts afresh, the in-memory token still covers drops.
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
  // A receipt sent after `leave_room` would only earn a NOT_IN_ROOM error.
  clearTimeout(state.readTimer);
  state.readTimer = null;
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
  $('reconnect').addEventListener('click', reconnectNow);
  // Back online (a laptop waking up, a phone out of a tunnel): no point waiting out the delay.
  window.addEventListener('online', () => {
    if (state.reconnectTimer !== null) reconnectNow();
  });
  // Messages become "seen" when the person comes back to the page.
  document.addEventListener('visibilitychange', scheduleRead);
  window.addEventListener('focus', scheduleRead);

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
  // After a reload the session may still be held: wait for the server's answer to `resume`
  // before showing a view, rather than flash the name form.
  state.sessionToken = storedSession();
  if (!state.sessionToken) showView('name');
  connect();
}

init();
