// The browser client of chat protocol v1 (see docs/protocol.md): the wiring, and the module
// index.html loads.
//
// One WebSocket to /ws carries JSON messages both ways. The page has three views:
// choose a name, the lobby (create or join a room) and the room (the conversation).
// When the connection drops, the page reconnects by itself and resumes its session, so
// the room and every message survive a network change (issue 6). Each message we send
// carries its own `client_msg_id` and is kept until the server confirms it; one cut off by
// a drop, or refused for now (UNAVAILABLE), is sent again under the same id, which the
// server never stores twice: every message is sent exactly once and shown once (issue 12).
//
// In an end-to-end encrypted room (issue 17) the page does not trust the server: it takes a
// room reply only as the answer to its own request, checks the room's key check as it enters,
// applies the sequence rules to what it opens, and, when the server breaks a rule, fails
// closed (`failRoom`): it sends nothing more in that room. `<html data-e2e>` says where it
// stands. docs/security.md explains why; docs/protocol.md gives the rules.
//
// The client is plain ES modules, with no build step:
// - protocol.js: the protocol's limits, close codes and error texts;
// - connection.js: the WebSocket and the session (resume, reconnecting, the replay); it
//   never touches the page;
// - views.js: the page (views, conversation, room bar, errors, typing, "Seen"); it never
//   sends on the socket;
// - e2e.js: end-to-end encryption (WebCrypto): a room's keys and key check, sealing and
//   opening envelopes, the handshake, and what the tab keeps for a room; it touches neither
//   the page nor the socket;
// - attention.js: while the person looks elsewhere, the unread count in the tab's title and
//   on its icon, and notifications (its own elements only; main.js tells it of the peer's
//   messages);
// - invite.js: the invite's QR code (drawn by vendor/qrcode-generator.js) and Share button,
//   which views.js shows with the invite link;
// - main.js, this file: what the page knows of the chat (`state`), the handlers that turn the
//   server's messages into views and the person's actions into messages, and the startup.
//   It is the only module that imports both the connection and the views; it reaches the
//   page only through views.js, and the socket only through connection.js.

import * as attention from './attention.js';
import * as connection from './connection.js';
import * as e2e from './e2e.js';
import { ERROR_TEXT, MAX_MESSAGE_CHARS } from './protocol.js';
import * as views from './views.js';

/**
 * While the user keeps typing we repeat `typing` this often. The server treats a repeated
 * `typing` as "restart my timer" (its timeout is 5 s by default), so a refresh every 2 s
 * keeps the indicator alive without sending a message per keystroke.
 */
const TYPING_REFRESH_MS = 2000;
/** After this long without a keystroke we tell the peer we stopped typing. */
const TYPING_IDLE_MS = 3000;
/**
 * A `read` receipt waits this long before it goes out, so a burst of messages (a replay
 * after a reconnect, say) costs one receipt, not one per message: every message counts
 * against the server's rate limit.
 */
const READ_DELAY_MS = 300;
/**
 * A message the server could not store for now (UNAVAILABLE: it cannot reach its store) is
 * sent again after this long; each time it is refused again the wait doubles...
 */
const RESEND_FIRST_MS = 1000;
/** ...up to this. */
const RESEND_MAX_MS = 10000;

/** Said when the server no longer holds our session and the page had to start over. */
const NOT_RESUMED =
  'Your session could not be resumed (away too long, or the server restarted), so you started afresh.';

/**
 * Everything the page knows of the chat. Changed only by the handlers below. (What the
 * connection knows, the socket and the session, is connection.js's.)
 */
const state = {
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
   * page sends one request at a time, so an `error` belongs to this request. (Only chat
   * messages may be several on their way: an error about one is about the oldest, see
   * `takeOldestUnconfirmed`.)
   */
  lastSlot: 'name',
  /**
   * Our messages on their way: sent, but not back yet as our own `chat` (the server's word
   * that it stored them), by `client_msg_id`, oldest first. Each is `{ request, text }`: the
   * `chat` request exactly as sent, to send again as it is, and the text the person wrote.
   */
  unconfirmed: new Map(),
  /** The pending resend of `unconfirmed` after UNAVAILABLE, or null. */
  resendTimer: null,
  /** How long the next resend after UNAVAILABLE waits (see RESEND_FIRST_MS). */
  resendDelay: RESEND_FIRST_MS,
  /** When we last sent `typing`, in ms; 0 while the peer believes we are idle. */
  typingSentAt: 0,
  /** Fires `stop_typing` after TYPING_IDLE_MS without input. */
  idleTimer: null,
  /** Whether `pendingJoin` is the room we were in when our session expired. */
  rejoining: false,
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
   * Whether the current room is end-to-end encrypted: the server says so, or this tab holds
   * a key for it (then a server that calls the room plain cannot make the page send
   * plaintext).
   */
  encrypted: false,
  /** The current encrypted room's link key (base64url), or null: this page cannot read it. */
  linkKey: null,
  /** The AES-GCM key derived from `linkKey`: a promise of a CryptoKey, or of null. */
  roomKey: null,
  /** The link key made for the room we asked to create encrypted, until `room_created`. */
  pendingKey: null,
  /**
   * Counts the conversations shown, so that a message opened after its conversation was
   * cleared (the person left meanwhile) is not shown in the next one, whose ids start over.
   */
  conversation: 0,
  /**
   * The room request we sent and await the answer to, or null: `{ type, code, encrypted }`
   * (`type` is `create_room`, `join_room` or `leave_room`; `code` the room's code in canonical
   * form, null for a create; `encrypted` whether we asked for, or hold a key for, an encrypted
   * room). `room_created`, `room_joined` and `room_left` are acted on only as its answer: the
   * server cannot move the page into a room it did not ask for, or out of one.
   */
  request: null,
  /**
   * Where the page stands on end-to-end encryption, also on `<html data-e2e>`: `none` (no room,
   * or a plain room), `verifying` (an encrypted room whose key is not confirmed yet),
   * `verified` (confirmed: by the key check at join, or by an envelope from the other person
   * that opened), `failed` (a wrong link, or a server that broke the rules: nothing more is
   * sent in this room).
   */
  e2e: 'none',
  /** This tab's run id in the current encrypted room (8 bytes), or null. */
  run: null,
  /**
   * What the page has seen of each run in this room, by run id in hex: `{ highest, missing }`,
   * the highest sequence number taken and the numbers counted missing (see `track`).
   */
  runs: new Map(),
  /** Whether the other person arrived while we were in the room (their first live envelope
   * then says how many of theirs we missed). */
  peerArrivedLive: false,
  /** This run's ephemeral key pair (a promise of `{ privateKey, publicRaw }`), or null. */
  ephemeral: null,
  /** The sessions of the handshake by the peer's run id in hex (see e2e.session). */
  sessions: new Map(),
  /** The peer's run whose hello we opened last (hex), or null. */
  peerRun: null,
  /** Whether our messages go under the session with `peerRun` (see `sealKeyFor`). */
  sessionReady: false,
  /**
   * Whether this page gave its seat in the (failed) room back already: opened from a wrong
   * link, it leaves on the server at once, so the person with the whole link can come in.
   */
  seatGivenBack: false,
};

// ---------------------------------------------------------------------------------------
// The connection's news
// ---------------------------------------------------------------------------------------

/** The connection works and the server knows who we are: hide every sign of trouble. */
function onReady() {
  views.setConnectionStatus('connected');
  views.hideBanner();
}

/**
 * The socket closed (connection.js says how, and retries by itself when it should). What
 * belonged to it ends: our typing state, the peer's indicator, a receipt not sent yet.
 */
function onClosed(close) {
  forgetTyping();
  views.hidePeerTyping();
  clearTimeout(state.readTimer);
  state.readTimer = null;

  if (close.why === 'elsewhere') {
    views.setConnectionStatus('offline');
    views.showBanner('This chat was opened elsewhere (another tab or window).', 'Use it here');
    if (state.roomCode) views.addEvent('This chat was opened elsewhere, so this page stopped.');
    return;
  }
  if (close.why === 'refused') {
    views.setConnectionStatus('offline');
    views.showBanner(close.reason || 'The server closed the connection.', 'Reconnect');
    return;
  }

  if (close.outageBegins && state.roomCode) views.addEvent('Connection lost. Reconnecting…');
  views.setConnectionStatus('reconnecting');
  views.showBanner(
    close.outage
      ? 'The connection to the server was lost. Reconnecting…'
      : 'Cannot reach the server right now. Trying again…',
    'Retry now',
  );
}

/** "Retry now", "Use it here", or the device coming back online: connect without waiting. */
function reconnectNow() {
  if (connection.isActive()) return; // An attempt is already under way.
  views.disableRetry();
  connection.connect();
}

/**
 * A socket opened with no session to resume. A server that gives out no session token
 * (protocol v1 only) forgets us with the connection: tell it our name again, and
 * `onUsernameSet` rejoins our room, if any.
 */
function onNoSession() {
  if (state.name) startAfresh();
}

/**
 * Our session is gone (the server restarted, or we were away longer than its grace period):
 * start over as a new client, with our name, and back into our room if it still exists.
 */
function startAfresh() {
  giveBackUnconfirmed();
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
    views.showView('name');
  }
}

/** Sends one message; `slot` names the control whose errors the reply may carry. */
function send(message, slot) {
  if (!mayGoOut(message)) return false;
  if (!connection.send(message)) {
    if (slot) showError(slot, 'Not connected right now. Reconnecting… then try again.');
    return false;
  }
  if (slot) state.lastSlot = slot;
  return true;
}

/**
 * The last gate before the socket, which every message of the page passes (see also
 * `resendUnconfirmed`): in a failed room only `leave_room` goes out, and in an encrypted room
 * (one the server says is, or one we hold a key for) no chat goes out that is not an envelope.
 */
function mayGoOut(message) {
  if (state.e2e === 'failed' && state.roomCode !== null) return message.type === 'leave_room';
  if (message.type === 'chat' && state.encrypted && message.encrypted !== true) return false;
  return true;
}

/**
 * Sends a room request (`create_room`, `join_room` or `leave_room`) and remembers it as the
 * one outstanding: only its answer may move the page into or out of a room.
 */
function sendRequest(message, slot, expected) {
  if (!send(message, slot)) return false;
  state.request = expected;
  return true;
}

/** Asks to join room `code` (from an invite, the join form, or after a session was lost). */
function requestJoin(code) {
  const canon = canonical(code);
  const expected = { type: 'join_room', code: canon, encrypted: e2e.keyFor(canon) !== null };
  return sendRequest({ type: 'join_room', room_code: code }, 'join', expected);
}

/** The room this tab is in, kept across a reload: the only room a `resumed` may put it in. */
function storeRoom(code) {
  try {
    if (code) sessionStorage.setItem('chat.room', code);
    else sessionStorage.removeItem('chat.room');
  } catch {
    // Storage blocked: a reload starts afresh anyway (no session either).
  }
}

function storedRoom() {
  try {
    return sessionStorage.getItem('chat.room');
  } catch {
    return null;
  }
}

/** Shows `text` under the control of `slot` (see views.showError). */
function showError(slot, text) {
  views.showError(slot, text, Boolean(state.roomCode));
}

// ---------------------------------------------------------------------------------------
// Messages from the server
// ---------------------------------------------------------------------------------------

/**
 * The handlers of the server's messages, by `type`. `connected`, `resumed`, `chat` and the
 * `SESSION_EXPIRED` error are the connection's first: it hands them on to `onResumed`,
 * `onChat` and `startAfresh` (see `init`).
 */
const HANDLERS = {
  username_set: onUsernameSet,
  room_created: onRoomCreated,
  room_joined: onRoomJoined,
  peer_joined: onPeerJoined,
  typing: (m) => views.showPeerTyping(m.username),
  stop_typing: views.hidePeerTyping,
  peer_left: onPeerLeft,
  peer_disconnected: onPeerDisconnected,
  peer_reconnected: onPeerReconnected,
  read: onRead,
  room_left: onRoomLeft,
  error: onError,
};

function onMessage(message) {
  const handler = HANDLERS[message.type];
  if (handler) return handler(message);
  return undefined;
}

/**
 * Our session is back: the same name, room and seat, plus what was said meanwhile. Only for
 * the room we were in (kept in sessionStorage across a reload): a server that resumes us into
 * another room, or out of an encrypted one we hold the key of, broke the rules.
 */
async function onResumed(message) {
  state.name = message.username;
  if (message.username) views.showName(message.username);

  const code = message.room_code ? canonical(message.room_code) : null;
  const expected = state.roomCode || storedRoom();
  const asked = state.request;
  state.request = null; // A request lost with the connection is answered by this, or never.
  if (code !== expected && !(asked && answers(asked, code))) {
    if (expected && e2e.keyFor(expected)) {
      failRoom(expected, 'server');
      return;
    }
    if (code && e2e.keyFor(code) && message.encrypted !== true) {
      failRoom(code, 'server');
      return;
    }
  }

  if (code && asked && asked.type === 'create_room' && asked.encrypted && state.pendingKey) {
    // Our `create_room` went through, and its answer was lost with the connection.
    e2e.rememberKey(code, state.pendingKey);
  }
  state.pendingKey = null;
  if (code) {
    const sameRoom = views.roomShown() === code;
    const peerBefore = state.peer;
    if (!(await enterRoom(code, message.peer, message))) return;
    if (sameRoom) {
      views.addEvent('Reconnected.');
      // The room may have changed while we were away: say so before what was said.
      if (peerBefore !== null && peerBefore !== message.peer) {
        views.addEvent(`${peerBefore} left while you were away.`);
      }
      if (message.peer !== null && peerBefore !== message.peer) {
        views.addEvent(`${message.peer} joined while you were away.`);
      }
    } else if (message.missed.length > 0) {
      views.addEvent('Earlier in this room'); // A reload: the page starts empty.
    }
    // Messages the server no longer had (its storage bounds): say so, rather than let the
    // conversation look complete.
    if (message.lost > 0) {
      const what = message.lost === 1 ? '1 earlier message' : `${message.lost} earlier messages`;
      views.addEvent(`${what} could not be recovered.`);
    }
    // Handled like live messages (our own confirm what we sent), but as a replay (see
    // `track`); `addChat` skips what is already on screen, so nothing shows twice. The rest,
    // if any, follows as `chat` frames; the connection calls `replayDone` once they are in.
    message.missed.forEach((chat) => connection.receiveChat(chat, true));
    state.peerAway = message.peer !== null && !message.peer_connected;
    updateRoomBar();
    if (state.peerAway) views.addEvent(peerAwayText(message.peer));
    if (message.peer !== null) queueHello();
    return;
  }
  if (views.roomShown()) {
    views.showLobbyNote(`You are no longer in room ${views.roomShown()}.`);
  }
  leaveRoomLocally();
  if (!message.username) views.showView('name');
  else if (views.currentView() !== 'name') views.showView('lobby');
}

/** Whether `code` (canonical, or null) is what request `asked` may be answered with. */
function answers(asked, code) {
  if (asked.type === 'leave_room') return code === null;
  if (asked.type === 'create_room') return code !== null;
  return code === asked.code;
}

/**
 * Every missed message is in, our own among them: what is still on its way was cut off by
 * the drop, so it goes out again now.
 */
function replayDone() {
  resendUnconfirmed();
  scheduleRead();
}

function onUsernameSet(message) {
  state.name = message.username;
  rememberName(message.username);
  views.showName(message.username);
  // An invite is used once; a later name change is just a name change.
  views.forgetInvite();
  if (state.pendingJoin) {
    // An invite link or a lost connection: go straight (back) into that room.
    const code = state.pendingJoin;
    state.pendingJoin = null;
    if (state.rejoining) {
      // Shown in the lobby only if getting back in fails (entering the room clears it).
      views.showLobbyNote(`${NOT_RESUMED} You were in room ${code}.`);
    }
    views.setJoinCode(code);
    requestJoin(code);
  } else {
    views.showView('lobby');
  }
}

/**
 * Our room was created. Only as the answer to our own `create_room`; and if we asked for an
 * encrypted room, only with `"encrypted": true`: a server that answers without it (to make
 * the page throw the key away and write in plaintext) puts the page in the failed state.
 */
async function onRoomCreated(message) {
  const asked = state.request;
  if (!asked || asked.type !== 'create_room') {
    unrequested();
    return;
  }
  state.request = null;
  const code = canonical(message.room_code);
  const key = state.pendingKey;
  state.pendingKey = null;
  if (asked.encrypted) {
    // Kept before anything else: from now on this page holds a key for this room, and never
    // writes there in plaintext, whatever the server says next.
    e2e.rememberKey(code, key);
    if (message.encrypted !== true) {
      failRoom(code, 'server');
      return;
    }
  }
  // Our own key cannot be the wrong one: a check that differs from the one we sent is the
  // server's doing.
  await enterRoom(code, null, message, 'server');
}

/**
 * We joined a room. Only as the answer to our own `join_room`, for the code we asked for; a
 * room we hold a key for must say it is encrypted, and its key check must match our key's.
 */
async function onRoomJoined(message) {
  const asked = state.request;
  const code = canonical(message.room_code);
  if (!asked || asked.type !== 'join_room' || asked.code !== code) {
    unrequested();
    return;
  }
  state.request = null;
  const rejoined = state.rejoining && views.roomShown() === code;
  state.rejoining = false;
  if (!(await enterRoom(code, message.peer, message))) return;
  if (rejoined) {
    // The server emptied the room's history when our seat went, so what it sends now was all
    // said after that; what was said before it is gone.
    views.addEvent(
      `${NOT_RESUMED} You are back with ${message.peer}; ` +
        'messages sent while you were away may be missing.',
    );
    message.history.forEach((chat) => connection.receiveChat(chat, true));
  } else {
    if (message.history.length > 0) {
      views.addEvent('Earlier in this room');
      for (const chat of message.history) await addChat(chat, true);
    }
    views.addEvent(`You joined ${message.peer} in room ${code}.`);
  }
  queueHello();
}

/**
 * A room message nobody asked for (a `room_created`, `room_joined` or `room_left` that answers
 * no request of ours, or names another room). In an encrypted room, or while we wait for one,
 * that is a server breaking the rules: the page fails closed. Elsewhere it is ignored: the
 * page stays where it is, and nothing it would send could be at risk.
 */
function unrequested() {
  const asked = state.request;
  if (state.roomCode !== null && state.encrypted) failRoom(state.roomCode, 'server');
  else if (state.roomCode === null && asked && asked.encrypted && asked.code) {
    failRoom(asked.code, 'server');
  } else if (state.roomCode === null && asked && asked.encrypted) {
    // We asked to create an encrypted room, and got something else: there is no room to stay
    // in, so the lobby says it, and the person starts again from there.
    state.request = null;
    state.pendingKey = null;
    setE2e('failed');
    views.showLobbyNote(views.FAILED_TEXT.broken);
  }
}

function onPeerJoined(message) {
  state.peer = message.username;
  state.peerAway = false;
  state.peerArrivedLive = true;
  // A new person has read nothing yet; "Seen" moves on with their first receipt.
  state.peerReadUpTo = 0;
  updateRoomBar();
  views.addEvent(`${message.username} joined.`);
  queueHello();
}

function onChat(message, replay) {
  if (message.from === state.name) {
    confirmSent(message);
  } else {
    // The server sends `stop_typing` before the chat that ends typing; hide it anyway in
    // case the order ever changes, a typing indicator above the message it became is odd.
    views.hidePeerTyping();
  }
  return addChat(message, replay);
}

function onPeerLeft(message) {
  views.hidePeerTyping();
  state.peer = null;
  state.peerAway = false;
  // The next person is another run: our messages go under the room key until their hello.
  state.sessionReady = false;
  state.peerRun = null;
  if (state.roomCode) e2e.forgetPeer(state.roomCode);
  views.showSafetyNumber(null);
  updateRoomBar();
  const how = message.reason === 'disconnected' ? 'lost their connection' : 'left the room';
  views.addEvent(`${message.username} ${how}. The room stays open under the same code.`);
}

function onPeerDisconnected(message) {
  views.hidePeerTyping();
  state.peerAway = true;
  updateRoomBar();
  views.addEvent(peerAwayText(message.username));
}

function onPeerReconnected(message) {
  state.peerAway = false;
  updateRoomBar();
  views.addEvent(`${message.username} is back.`);
}

function peerAwayText(name) {
  return `${name}: connection lost — waiting for them to come back. Your messages will reach them.`;
}

/** The peer has seen our messages up to `up_to`. */
function onRead(message) {
  if (message.up_to <= state.peerReadUpTo) return;
  state.peerReadUpTo = message.up_to;
  views.showSeen(state.peerReadUpTo);
}

/** We left the room: only as the answer to our own `leave_room`, for the room we left. */
function onRoomLeft(message) {
  const asked = state.request;
  const code = canonical(message.room_code);
  if (!asked || asked.type !== 'leave_room' || asked.code !== code) {
    unrequested();
    return;
  }
  state.request = null;
  if (state.roomCode !== code) return; // Already left on our side (a failed room).
  if (state.seatGivenBack) return; // A wrong link's seat, given back: the page still says why.
  leaveRoomLocally();
  views.showLobbyNote(`You left room ${code}.`);
  views.showView('lobby');
  views.focusCreateRoom();
}

function onError(message) {
  state.rejoining = false; // Whatever failed, a later join is the user's own again.
  state.pendingKey = null; // A refused `create_room` made no room to keep a key for.
  // The server answers requests in order: a room request refused is a request answered.
  if (state.request && state.lastSlot !== 'composer') state.request = null;
  if (message.code === 'UNAVAILABLE' && onUnavailable()) return;
  const text = ERROR_TEXT[message.code] || message.message || 'Something went wrong.';
  // Without a name the lobby makes no sense: send the user back to the name form.
  const slot = message.code === 'USERNAME_REQUIRED' ? 'name' : state.lastSlot;
  showError(slot, text);
  if (slot === 'composer') {
    // The input was cleared when the message went out; give the refused text back.
    const refused = takeOldestUnconfirmed();
    if (refused !== null && views.messageText() === '') views.setMessageText(refused);
  }
}

/**
 * The server cannot reach its store right now (UNAVAILABLE), so it did nothing. In a room,
 * unless we asked to leave, that answered one of our chat messages, which is sent again after
 * a pause and shows as on its way meanwhile, or a typing or a receipt, which are of the moment
 * and replaced by the next one: nothing to tell the person. Returns whether that was all.
 */
function onUnavailable() {
  scheduleResend();
  return state.roomCode !== null && state.lastSlot !== 'room';
}

// ---------------------------------------------------------------------------------------
// The room, its encryption, and its conversation
// ---------------------------------------------------------------------------------------

/** A room code in canonical form: trimmed, upper case (as the server compares them). */
function canonical(code) {
  return String(code ?? '').trim().toUpperCase();
}

/**
 * Switches to the room view for `code` as the server's `reply` (`room_created`, `room_joined`
 * or `resumed`) describes it; `peer` is null while we wait alone. For an encrypted room, checks
 * what the reply says against the key this tab holds: returns false, with the page in the
 * failed state, if they disagree (`mismatch` says why a key check that differs fails it).
 */
async function enterRoom(code, peer, reply, mismatch = 'link') {
  const sameRoom = views.roomShown() === code;
  // Keep the conversation on screen when we come back to the same room after a reconnect.
  if (!sameRoom) clearConversation();
  state.roomCode = code;
  state.peer = peer;
  storeRoom(code);
  useRoomKey(code, reply.encrypted === true);
  views.showRoom(code, state.linkKey);
  updateRoomBar();
  views.showView('room');
  const failure = e2e.failureIn(code);
  if (failure) {
    failRoom(code, failure); // Failed before (and reloaded since): it stays failed.
    return false;
  }
  // A page that holds this room's key never takes the server's word that it is plain.
  if (state.linkKey && reply.encrypted !== true) {
    failRoom(code, 'server');
    return false;
  }
  views.showEncryption(encryptionShown());
  if (!state.encrypted) {
    setE2e('none');
    return true;
  }
  if (!state.roomKey) {
    setE2e('verifying'); // No key here: nothing to confirm, and nothing is sent.
    return true;
  }
  if (typeof reply.key_check === 'string') {
    // The check of the key the room was created with against our link's: a cut-short or
    // changed link finds out here, before a single message is shown.
    const ours = await e2e.keyCheck(state.linkKey).catch(() => null);
    if (ours !== reply.key_check) {
      failRoom(code, mismatch);
      return false;
    }
    setE2e('verified');
  } else if (!(sameRoom && state.e2e === 'verified')) {
    setE2e('verifying'); // Until an envelope from the other person opens.
  }
  await restoreHandshake(code);
  return true;
}

/**
 * Takes up the key of room `code` (null: no room), if this tab holds one. A room is treated
 * as encrypted if the server says so or if we hold a key for it: once a page has a room's
 * key, nobody can talk it into sending that room plaintext.
 */
function useRoomKey(code, encrypted) {
  const linkKey = code === null ? null : e2e.keyFor(code);
  state.encrypted = code !== null && (encrypted || linkKey !== null);
  state.linkKey = state.encrypted ? linkKey : null;
  state.roomKey =
    state.linkKey && e2e.available()
      ? e2e.roomKey(state.linkKey, code).catch(() => null)
      : null;
  state.run = state.roomKey ? e2e.runFor(code) : null;
}

/** What the room bar and the composer show of the encryption (see views.showEncryption). */
function encryptionShown() {
  if (!state.encrypted) return 'plain';
  if (state.roomKey) return 'on';
  return state.linkKey ? 'unsupported' : 'no-key';
}

/** Sets where the page stands (see `state.e2e`), on the page too. */
function setE2e(value) {
  state.e2e = value;
  views.showE2eState(value);
}

/**
 * The page stops trusting the server in room `code`: a wrong link (`why` is `'link'`) or a
 * server that broke the rules (`'server'`). From now on nothing more is sent in this room (no
 * message, no typing, no receipt, see `send`), the page says plainly why, and the person can
 * only leave and start again. It stays so across a reload of the tab.
 */
function failRoom(code, why) {
  e2e.markFailed(code, why);
  if (views.roomShown() !== code) {
    clearConversation();
    views.showRoom(code, null);
  }
  state.roomCode = code;
  state.encrypted = true; // Whatever the server said: never plaintext here.
  state.request = null;
  storeRoom(code);
  forgetTyping();
  clearTimeout(state.readTimer);
  state.readTimer = null;
  forgetUnconfirmed();
  setE2e('failed');
  views.showEncryption(why === 'link' ? 'wrong-link' : 'broken');
  views.showSafetyNumber(null);
  updateRoomBar();
  views.showView('room');
  if (why === 'link') giveSeatBack(code);
}

/**
 * Opened from a wrong link, the page cannot take part in the room, and its seat would keep the
 * person with the whole link out (the room is for two): it gives the seat back at once (only
 * `leave_room` passes a failed room's gate). The page stays where it is, saying why, until its
 * person leaves: the answer, `room_left`, changes nothing on it.
 */
function giveSeatBack(code) {
  if (sendRequest({ type: 'leave_room' }, 'room', { type: 'leave_room', code, encrypted: false })) {
    state.seatGivenBack = true;
  }
}

/** Leaves the room on our side: the conversation, the key and all that belonged to it go. */
function leaveRoomLocally() {
  if (state.roomCode) e2e.forgetRoom(state.roomCode);
  state.roomCode = null;
  state.seatGivenBack = false;
  state.peer = null;
  storeRoom(null);
  useRoomKey(null, false);
  clearConversation();
  setE2e('none');
  views.showEncryption('plain');
  views.showTitle(null);
}

function updateRoomBar() {
  views.updateRoomBar(state.peer, state.peerAway);
}

/**
 * Empties the conversation, and forgets the ids, receipts, messages on their way, runs and
 * sessions that belonged to it.
 */
function clearConversation() {
  views.clearConversation();
  forgetUnconfirmed();
  state.conversation += 1;
  state.lastId = 0;
  state.lastPeerId = 0;
  state.readSent = 0;
  state.peerReadUpTo = 0;
  clearTimeout(state.readTimer);
  state.readTimer = null;
  state.runs = new Map();
  state.peerArrivedLive = false;
  state.ephemeral = null;
  state.sessions = new Map();
  state.peerRun = null;
  state.sessionReady = false;
  views.showSafetyNumber(null);
}

/**
 * Shows one `chat` message; `replay` if it comes in a join's history or a resume's replay
 * rather than live. A message already on screen (ids only grow within a room) is skipped, so
 * a replay never shows one twice. A failed room shows nothing more.
 */
async function addChat(message, replay) {
  if (message.id <= state.lastId) return;
  state.lastId = message.id;
  if (state.e2e === 'failed') return;
  const own = message.from === state.name;
  if (!own) {
    state.lastPeerId = message.id;
    scheduleRead();
  }
  if (state.encrypted || message.encrypted) {
    await addSealedChat(message, own, replay);
    return;
  }
  views.addChat(message, own);
  if (!own) peerMessageShown(message.from, message.content, false);
}

/**
 * A message from the peer is on the page now: while the person looks elsewhere, the unread
 * count and a notification (attention.js). Only for what is shown as a message: never for a
 * hello, a repeat, or what could not be opened; an encrypted room's text stays on the page.
 */
function peerMessageShown(from, text, encrypted) {
  attention.peerMessage({ room: state.roomCode, from, text: encrypted ? null : text, encrypted });
}

/**
 * Shows a message of an encrypted room, once opened, and applies the sequence rules of
 * docs/protocol.md: a repeat is not shown again, a gap is said, a late message is marked.
 * Without the key it says so; one that does not open (changed, moved from another room or
 * sender, a v1 envelope, or plaintext where only envelopes belong) is never shown as text.
 */
async function addSealedChat(message, own, replay) {
  if (!state.roomKey) {
    views.addChat(message, own, 'locked');
    return;
  }
  const { conversation, roomCode } = state;
  const header = message.encrypted === true ? e2e.readHeader(message.content) : null;
  // Our own run under the other person's name is a message of ours moved: never theirs.
  if (header === null || (!own && e2e.sameBytes(header.run, state.run))) {
    views.addChat(message, own, 'unverified');
    return;
  }
  const keys = await keysToOpen(header, own);
  if (keys.length === 0) {
    views.addChat(message, own, 'earlier-session');
    return;
  }
  let opened = null;
  for (const key of keys) {
    opened = key ? await e2e.openEnvelope(key, roomCode, message.from, header) : null;
    if (opened) break;
  }
  if (conversation !== state.conversation || state.e2e === 'failed') return; // Left meanwhile.
  if (opened === null) {
    views.addChat(message, own, 'unverified');
    return;
  }
  if (!own && state.e2e === 'verifying') setE2e('verified'); // It opened: the key is right.
  const seen = track(e2e.toHex(header.run), opened.seq, replay || own);
  if (seen.repeat) return; // Shown already, or replayed from before what we saw.
  if (seen.missing > 0 && !own) {
    const what = seen.missing === 1 ? '1 message' : `${seen.missing} messages`;
    views.addEvent(`${what} from ${message.from} did not arrive.`);
  }
  if (opened.type === e2e.TYPE.hello) {
    if (!own) await onHello(header.run, opened.body);
    return;
  }
  const text = opened.type === e2e.TYPE.text ? e2e.textOf(opened.body) : null;
  if (text === null) {
    views.addChat(message, own, 'unverified');
    return;
  }
  views.addChat({ ...message, content: text }, own);
  if (seen.late) views.markLate(message.id);
  if (!own) peerMessageShown(message.from, text, true);
}

/** The keys an envelope with `header` may open with: the room key, or a session's. */
async function keysToOpen(header, own) {
  if (header.kind === e2e.KIND.room) return [await state.roomKey];
  const sessions = await Promise.all(state.sessions.values());
  if (own) return sessions.filter(Boolean).map((s) => s.sendKey);
  const session = await state.sessions.get(e2e.toHex(header.run));
  return session ? [session.receiveKey] : [];
}

/**
 * The sequence rules for sequence number `seq` of run `run` (hex): returns `{ repeat }` for a
 * number already taken (or below what we saw, never counted missing), `{ late }` for one
 * counted missing that arrives now, else `{ missing }`, how many numbers it skipped. The
 * first envelope of a run is taken whatever its number when it comes in a history or replay
 * (a newcomer sees only the last messages) or is our own; live from a person who arrived
 * while we were here, the numbers before it count as missing.
 */
function track(run, seq, anyFirst) {
  let seen = state.runs.get(run);
  if (!seen) {
    seen = { highest: anyFirst || !state.peerArrivedLive ? seq - 1 : 0, missing: new Set() };
    state.runs.set(run, seen);
  }
  if (seq > seen.highest) {
    const missing = seq - seen.highest - 1;
    // Remember the missing numbers (the last thousand at most), to mark them if they come.
    for (let n = Math.max(seen.highest + 1, seq - 1000); n < seq; n += 1) seen.missing.add(n);
    seen.highest = seq;
    return { missing };
  }
  if (seen.missing.delete(seq)) return { late: true };
  return { repeat: true };
}

// ---------------------------------------------------------------------------------------
// The handshake: session keys after both are present, and the safety number
// ---------------------------------------------------------------------------------------

/**
 * After entering an encrypted room (or a reload): this run's ephemeral key, and the session
 * with the peer's last hello this tab kept, so a reload goes on where it was.
 */
async function restoreHandshake(code) {
  if (!state.roomKey || state.ephemeral) return;
  state.ephemeral = e2e.ephemeralFor(code).catch(() => null);
  const hello = e2e.peerHelloFor(code);
  if (!hello) return;
  const session = await startSession(hello.run, hello.publicRaw, true);
  if (session && e2e.readyWith(code) === e2e.toHex(hello.run)) state.sessionReady = true;
}

/**
 * Computes the session with the peer's run `peerRun` and key; null if the key is no key. With
 * `current`, it is the session with the person here now: its safety number is shown.
 */
async function startSession(peerRun, publicRaw, current) {
  const mine = await state.ephemeral;
  if (!mine) return null;
  try {
    const session = await e2e.session(state.roomCode, state.run, mine, peerRun, publicRaw);
    const hex = e2e.toHex(peerRun);
    state.sessions.set(hex, session);
    if (current) {
      state.peerRun = hex;
      views.showSafetyNumber(session.safetyNumber);
    }
    return session;
  } catch {
    return null;
  }
}

/** Sends our hello once the other person is present, if we have not sent one in this room. */
function queueHello() {
  if (!state.roomKey || state.peer === null || state.e2e === 'failed') return;
  if (e2e.helloSent(state.roomCode)) return;
  // It names the other person's run if their hello came first (from the history, say).
  return sendHello(state.peerRun ? e2e.fromHex(state.peerRun) : null);
}

/**
 * A hello from the peer's run `run` opened: a session with it. If it does not name our run,
 * the other page has not seen our hello (a newcomer, or a new tab): we send one naming theirs,
 * which then precedes our session-sealed messages. A hello that is no hello fails the room.
 */
async function onHello(run, body) {
  const hello = e2e.readHello(body);
  const session = hello ? await startSession(run, hello.publicRaw, state.peer !== null) : null;
  if (!session) {
    failRoom(state.roomCode, 'server');
    return;
  }
  // Nobody here (a replay of what someone who left said): the session opens their messages,
  // but ours will be for whoever comes next.
  if (state.peer === null) return;
  const code = state.roomCode;
  const hex = e2e.toHex(run);
  e2e.rememberPeerHello(code, run, hello.publicRaw);
  if (e2e.sameBytes(hello.seenRun, state.run)) {
    e2e.markReady(code, hex);
    state.sessionReady = true;
  } else if (e2e.readyWith(code) !== hex) {
    state.sessionReady = false;
    if (await sendHello(run)) {
      e2e.markReady(code, hex);
      state.sessionReady = true;
    }
  } else {
    state.sessionReady = true;
  }
}

/** Seals and sends our hello, naming `peerRun` (or nobody); returns whether it went out. */
async function sendHello(peerRun) {
  const code = state.roomCode;
  const mine = await state.ephemeral;
  const key = await state.roomKey;
  if (!mine || !key || state.roomCode !== code) return false;
  e2e.markHelloSent(code);
  const envelope = await e2e.sealEnvelope(key, {
    code,
    from: state.name,
    kind: e2e.KIND.room,
    run: state.run,
    seq: e2e.nextSequence(code),
    type: e2e.TYPE.hello,
    body: e2e.helloBody(peerRun, mine.publicRaw),
  });
  const request = { type: 'chat', content: envelope, encrypted: true, client_msg_id: newClientMsgId() };
  if (!send(request)) return false;
  state.lastSlot = 'composer';
  state.unconfirmed.set(request.client_msg_id, { request, text: null });
  return true;
}

/**
 * The key our next message is sealed under: the session's with the current peer run once it
 * is ready (their hello opened, and ours precedes our session-sealed messages), else the room
 * key. `{ kind, key }`.
 */
async function sealKeyFor() {
  const session = state.sessionReady && state.peerRun ? await state.sessions.get(state.peerRun) : null;
  if (session) return { kind: e2e.KIND.session, key: session.sendKey };
  return { kind: e2e.KIND.room, key: await state.roomKey };
}

// ---------------------------------------------------------------------------------------
// Read receipts
// ---------------------------------------------------------------------------------------

/** Sends a `read` receipt soon, if the peer wrote something we have not confirmed yet. */
function scheduleRead() {
  if (state.readTimer !== null || state.lastPeerId <= state.readSent) return;
  state.readTimer = setTimeout(sendRead, READ_DELAY_MS);
}

function sendRead() {
  state.readTimer = null;
  // Without the key of an encrypted room there is nothing we could have read.
  if (state.encrypted && !state.roomKey) return;
  // Unseen messages stay unconfirmed; focus and visibilitychange schedule this again.
  if (!state.roomCode || !views.conversationVisible() || state.lastPeerId <= state.readSent) return;
  if (send({ type: 'read', up_to: state.lastPeerId })) state.readSent = state.lastPeerId;
}

// ---------------------------------------------------------------------------------------
// The composer and our own typing state
// ---------------------------------------------------------------------------------------

function sendChat() {
  const content = views.messageText();
  views.clearError('composer');
  if (state.e2e === 'failed') return; // Nothing more goes out in this room (see failRoom).
  const refusal = refusalOf(content);
  if (refusal) {
    showError('composer', refusal);
    return;
  }
  if (state.encrypted) {
    sendSealedChat(content);
    return;
  }
  if (!sendOwnChat({ content }, content)) return;
  views.setMessageText('');
  // The server ends our typing state itself when a chat arrives: no `stop_typing` needed.
  forgetTyping();
  views.focusMessage();
}

/**
 * Why the server would refuse `content` (empty, or too long), or null. Checked before
 * sending, so that such a message never shows as on its way; and in an encrypted room the
 * server sees only the envelope, so it could not check it at all.
 */
function refusalOf(content) {
  if (content.trim() === '') return ERROR_TEXT.EMPTY_MESSAGE;
  if ([...content].length > MAX_MESSAGE_CHARS) return ERROR_TEXT.MESSAGE_TOO_LONG;
  return null;
}

/**
 * Sends a message in an encrypted room, sealed: under the session key once the handshake is
 * done, else the room key, with this run's next sequence number. Without the key nothing is
 * sent (the composer is disabled then anyway).
 */
async function sendSealedChat(content) {
  if (!state.roomKey) {
    showError('composer', ERROR_TEXT.ENCRYPTION_REQUIRED);
    return;
  }
  // Cleared before sealing, which takes a moment, so that a second Enter sends nothing twice.
  const { roomCode, name, run } = state;
  views.setMessageText('');
  forgetTyping();
  const { kind, key } = await sealKeyFor();
  const envelope = key
    ? await e2e.sealEnvelope(key, {
        code: roomCode,
        from: name,
        kind,
        run,
        seq: e2e.nextSequence(roomCode),
        type: e2e.TYPE.text,
        body: e2e.utf8(content),
      })
    : null;
  if (state.roomCode !== roomCode) return; // We left the room meanwhile.
  const sent = envelope !== null && sendOwnChat({ content: envelope, encrypted: true }, content);
  if (!sent) {
    // Not sent: give the text back rather than lose it.
    if (views.messageText() === '') views.setMessageText(content);
    if (envelope === null) showError('composer', 'This page could not encrypt the message.');
    return;
  }
  views.focusMessage();
}

/** Called on every change of the message input. */
function onComposerInput() {
  views.updateCharCount();
  views.clearError('composer');
  if (views.messageText() === '') {
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

// ---------------------------------------------------------------------------------------
// Our messages on their way
// ---------------------------------------------------------------------------------------

/**
 * Sends one of our chat messages (`fields`: its `content`, and `encrypted` in an encrypted
 * room) under a fresh `client_msg_id`, and keeps it, shown as on its way, until the server
 * confirms it. `text` is what the person wrote. Returns false, keeping nothing, if it could
 * not go out.
 */
function sendOwnChat(fields, text) {
  const request = { type: 'chat', ...fields, client_msg_id: newClientMsgId() };
  if (!send(request, 'composer')) return false;
  state.unconfirmed.set(request.client_msg_id, { request, text });
  views.addPendingChat(request.client_msg_id, state.name, text);
  return true;
}

/**
 * A fresh `client_msg_id`: 128 random bits in hex. Not `crypto.randomUUID()`, which browsers
 * offer only to pages on https or localhost, and this page is also opened over plain http.
 */
function newClientMsgId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/**
 * Our own `chat` came back, live or in a replay: the server stored the message sent with its
 * `client_msg_id`, which is on its way no more.
 */
function confirmSent(message) {
  if (!state.unconfirmed.delete(message.client_msg_id)) return;
  views.removePendingChat(message.client_msg_id);
  // The server could store it: the next UNAVAILABLE starts again from the shortest pause.
  state.resendDelay = RESEND_FIRST_MS;
}

/**
 * Sends every message still on its way again, exactly as it went: the same `client_msg_id`,
 * and in an encrypted room the same envelope. The server does not store a repeat of an id it
 * already stored from us, it answers with the original message instead, so none is ever
 * stored or shown twice.
 */
function resendUnconfirmed() {
  clearTimeout(state.resendTimer);
  state.resendTimer = null;
  for (const { request } of state.unconfirmed.values()) {
    if (!mayGoOut(request)) return;
    // Not connected: they go out again once the session is resumed (see `replayDone`).
    if (!connection.send(request)) return;
    state.lastSlot = 'composer'; // An error in reply is about a chat message.
  }
}

/**
 * The server could not store a message of ours for now. Sends what is on its way again after
 * a pause, which doubles while this lasts: a server back in a second loses nobody's message,
 * and one that stays down longer is not flooded. One pause covers all of them, since messages
 * sent together are refused together.
 */
function scheduleResend() {
  if (state.resendTimer !== null || state.unconfirmed.size === 0) return;
  state.resendTimer = setTimeout(resendUnconfirmed, state.resendDelay);
  state.resendDelay = Math.min(RESEND_MAX_MS, state.resendDelay * 2);
}

/**
 * The server refused one of our chat messages for good (too fast, say). It answers requests in
 * order, so that is the oldest on its way, which is no longer: returns its text, or null.
 */
function takeOldestUnconfirmed() {
  const [oldest] = state.unconfirmed.keys();
  if (oldest === undefined) return null;
  const { text } = state.unconfirmed.get(oldest);
  state.unconfirmed.delete(oldest);
  if (text === null) return null; // A hello of ours: nothing the person wrote.
  views.removePendingChat(oldest);
  return text;
}

/**
 * Our session is gone (see `startAfresh`) with messages still on their way. Whether the server
 * stored them we cannot tell any more (a `client_msg_id` counts only within the session that
 * sent it), so rather than risk one showing twice, give them back to the person.
 */
function giveBackUnconfirmed() {
  const texts = forgetUnconfirmed();
  if (texts.length === 0) return;
  if (views.messageText() === '') views.setMessageText(texts.join('\n'));
  showError('composer', 'Your last message may not have got through before the connection dropped. Send it again?');
}

/** Forgets every message on its way; returns their texts, oldest first. */
function forgetUnconfirmed() {
  clearTimeout(state.resendTimer);
  state.resendTimer = null;
  state.resendDelay = RESEND_FIRST_MS;
  const texts = [...state.unconfirmed.values()].map((sent) => sent.text).filter((t) => t !== null);
  for (const clientMsgId of state.unconfirmed.keys()) views.removePendingChat(clientMsgId);
  state.unconfirmed.clear();
  return texts;
}

// ---------------------------------------------------------------------------------------
// Names and codes typed by the user
// ---------------------------------------------------------------------------------------

/**
 * Accepts a bare code or a whole invite link pasted into the code field: the code, and the
 * key if the link has one (`#key=…`), or null.
 */
function inviteFromInput(value) {
  const room = /[?&]room=([^&#\s]*)/.exec(value);
  const key = /#(?:[^#\s]*&)?key=([A-Za-z0-9_-]+)/.exec(value);
  return { code: (room ? room[1] : value).trim(), key: key ? key[1] : null };
}

/**
 * The invite the page was opened from (`/?room=CODE`, with `#key=…` for an end-to-end
 * encrypted room), or null: the code, and the key or null.
 */
function inviteFromUrl() {
  const code = new URLSearchParams(location.search).get('room');
  if (!code) return null;
  const key = new URLSearchParams(location.hash.slice(1)).get('key');
  return { code: canonical(code), key: e2e.isKey(key) ? key : null };
}

/**
 * Keeps the key of an invite for this tab. Once sessionStorage holds it, the fragment is
 * taken out of the address bar, so that the key is not left on screen or in the history (the
 * invite link the room shows has it again, to pass on).
 */
function keepInviteKey(invite) {
  if (!invite.key) return;
  const kept = e2e.rememberKey(invite.code, invite.key);
  if (kept && location.hash) history.replaceState(null, '', location.pathname + location.search);
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
// The person's actions, and the startup
// ---------------------------------------------------------------------------------------

function onNameSubmit(name) {
  views.clearError('name');
  send({ type: 'set_username', username: name }, 'name');
}

function onJoinSubmit(text) {
  views.clearError('join');
  const invite = inviteFromInput(text);
  if (e2e.isKey(invite.key)) e2e.rememberKey(canonical(invite.code), invite.key);
  views.setJoinCode(invite.code);
  setE2e('none'); // A new start: whatever failed before is behind us.
  requestJoin(invite.code);
}

/**
 * "Create a room", end-to-end encrypted if the box is ticked: the key is made here, and its
 * key check goes with the request, for the server to keep with the room.
 */
async function onCreateClick(encrypted) {
  views.clearError('create');
  setE2e('none');
  const sealed = encrypted && e2e.available();
  const key = sealed ? e2e.newKey() : null;
  const request = sealed
    ? { type: 'create_room', encrypted: true, key_check: await e2e.keyCheck(key) }
    : { type: 'create_room' };
  if (sendRequest(request, 'create', { type: 'create_room', code: null, encrypted: sealed })) {
    state.pendingKey = key;
  }
}

/**
 * "Leave". In a failed room the page does not wait for the server, which broke the rules
 * already: it asks to leave and goes back to the lobby at once.
 */
function onLeaveClick() {
  views.clearError('room');
  stopTyping();
  // A receipt sent after `leave_room` would only earn a NOT_IN_ROOM error.
  clearTimeout(state.readTimer);
  state.readTimer = null;
  const code = state.roomCode;
  const failed = state.e2e === 'failed';
  // A wrong link's page gave its seat back already (`giveSeatBack`): nothing to ask.
  if (!state.seatGivenBack) {
    sendRequest({ type: 'leave_room' }, 'room', { type: 'leave_room', code, encrypted: false });
  }
  if (failed) {
    leaveRoomLocally();
    views.showLobbyNote(`You left room ${code}. Start again with a new room and a new link.`);
    views.showView('lobby');
    views.focusCreateRoom();
  }
}

/**
 * The server's messages are handled one at a time, in the order they came, each to its end:
 * opening an envelope or checking a key is asynchronous (WebCrypto), and a message must not
 * overtake the one before it while that one is being opened. A chain of promises does it.
 */
let handled = Promise.resolve();

/** `handler`, run after everything handed over before it is done. */
function inTurn(handler) {
  return (...args) => {
    handled = handled
      .then(() => handler(...args))
      .catch((error) => console.error('handling a message from the server failed', error));
  };
}

function init() {
  connection.init({
    connecting: (hasSession) => views.setConnectionStatus(hasSession ? 'reconnecting' : 'connecting'),
    ready: onReady,
    noSession: onNoSession,
    sessionExpired: inTurn(startAfresh),
    resumed: inTurn(onResumed),
    chat: inTurn(onChat),
    replayDone: inTurn(replayDone),
    message: inTurn(onMessage),
    closed: onClosed,
    lastId: () => state.lastId,
  });
  views.bindControls({
    submitName: onNameSubmit,
    changeName: () => views.editName(state.name || ''),
    createRoom: onCreateClick,
    submitJoin: onJoinSubmit,
    leave: onLeaveClick,
    sendChat,
    composerInput: onComposerInput,
    copyCode: (button) => views.copy(state.roomCode, button, null),
    reconnect: reconnectNow,
  });
  // Back online (a laptop waking up, a phone out of a tunnel): no point waiting out the delay.
  window.addEventListener('online', () => {
    if (connection.retryScheduled()) reconnectNow();
  });
  // Messages become "seen" when the person comes back to the page.
  document.addEventListener('visibilitychange', scheduleRead);
  window.addEventListener('focus', scheduleRead);

  attention.init();
  views.offerEncryption(e2e.available());
  const invite = inviteFromUrl();
  if (invite) {
    // Opened from an invite link: the join form is prefilled, and after choosing a name
    // the user lands directly in the room.
    keepInviteKey(invite);
    state.pendingJoin = invite.code;
    views.showInvite(invite.code);
  }
  views.prefillName(rememberedName());
  // After a reload the session may still be held: wait for the server's answer to `resume`
  // before showing a view, rather than flash the name form.
  if (!connection.restoreSession()) views.showView('name');
  connection.connect();
}

init();
