// The connection to the server: one WebSocket to /ws at a time, and the session it carries.
//
// It opens the socket on the page's own host, turns frames into messages and messages into
// frames, keeps the session token (in sessionStorage too, so that a reload resumes), sends
// `resume` first on every new socket while it has a session, reconnects after a drop with an
// exponential, jittered delay (at once when a node says it is restarting, close code 1012),
// and counts a resume's replay: the `more` `chat` frames that follow `resumed` with the rest
// of `missed`. (`lost`, the messages the server no longer had, comes in `resumed` for the
// wiring to say.)
//
// It never touches the page: what should show, it tells the wiring (main.js) through the
// handlers given to `init`. The wiring is the only module that imports this one.

import { CLOSE_POLICY, CLOSE_RESUMED_ELSEWHERE, CLOSE_SERVICE_RESTART } from './protocol.js';

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
 * The wiring's handlers, set once by `init`. Each is a function:
 * - `connecting(hasSession)`: a socket is being opened; `hasSession` if we have a session to
 *   resume on it (so this is a reconnect, or a reload);
 * - `ready()`: the connection works and the server knows who we are;
 * - `noSession()`: a socket opened and we have no session to resume: to the server we are a
 *   new client;
 * - `sessionExpired()`: the server no longer had our session; this connection carries on as a
 *   new client (already `ready`);
 * - `resumed(message)`: our session is back (`ready` came just before); the message's `missed`
 *   is the wiring's to hand to `receiveChat`;
 * - `chat(message, replay)`: a chat message, live or (`replay`) replayed;
 * - `replayDone()`: every message missed while away is in;
 * - `message(message)`: any other message from the server;
 * - `closed(close)`: the socket closed. `close.why` is `'elsewhere'` (another connection
 *   resumed our session), `'refused'` (the server closed us on purpose; `close.reason` says
 *   why) or `'lost'` (anything else: a reconnect is scheduled; `close.outageBegins` if a working
 *   connection was just lost, `close.outage` while the one we lost is not back);
 * - `lastId()`: the highest chat `id` shown for the current room, for `resume`.
 */
let handlers = null;

/** What the connection knows. Changed only by the functions below. */
const conn = {
  /** The open WebSocket, or null while disconnected. */
  socket: null,
  /** Whether the current socket ever opened: "lost" versus "cannot reach" when it closes. */
  wasOpen: false,
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
   * How many `chat` frames of a replay are still to come after `resumed` (its `more`: the
   * rest of `missed`, which did not fit in one frame). Until they are in, our last message
   * may still be among them.
   */
  replayPending: 0,
};

/** Sets the wiring's handlers (see `handlers` above). Call once, before anything else. */
export function init(given) {
  handlers = given;
}

/**
 * Takes up the session this tab kept across a reload, if storage still holds one. Returns
 * whether there is a session to resume.
 */
export function restoreSession() {
  conn.sessionToken = storedSession();
  return Boolean(conn.sessionToken);
}

/** Opens the WebSocket on the page's own host, `wss:` when the page came over https. */
export function connect() {
  clearTimeout(conn.reconnectTimer);
  conn.reconnectTimer = null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const socket = new WebSocket(`${scheme}//${location.host}/ws`);
  conn.socket = socket;
  conn.wasOpen = false;
  handlers.connecting(Boolean(conn.sessionToken));
  socket.addEventListener('open', onOpen);
  socket.addEventListener('message', onSocketMessage);
  socket.addEventListener('close', onClose);
}

/** Whether a socket is open or opening: an attempt is under way. */
export function isActive() {
  return conn.socket !== null;
}

/** Whether an automatic reconnect is waiting out its delay. */
export function retryScheduled() {
  return conn.reconnectTimer !== null;
}

/** Sends one message; returns false, sending nothing, when it cannot go out now. */
export function send(message) {
  // While a `resume` is unanswered we do not know yet whether we are still in our room.
  if (!conn.socket || conn.socket.readyState !== WebSocket.OPEN || conn.resuming) return false;
  conn.socket.send(JSON.stringify(message));
  return true;
}

/**
 * Hands one `chat` message to the wiring, with whether it is part of a replay (`replay`: the
 * rest of a resume's `missed`, or what the wiring says), then counts it off the replay still
 * to come, if any. Every `chat` frame comes through here, and so do the chats the wiring handles like
 * live ones (a resume's `missed`, a rejoin's history).
 */
export function receiveChat(message, replay = conn.replayPending > 0) {
  handlers.chat(message, replay);
  if (conn.replayPending > 0) {
    conn.replayPending -= 1;
    if (conn.replayPending === 0) handlers.replayDone();
  }
}

function onOpen() {
  conn.wasOpen = true;
  if (conn.sessionToken) {
    // `resume` is only accepted as the very first message of a connection, so it goes out
    // before anything else, even before the server's `connected` greeting has arrived.
    conn.resuming = true;
    conn.socket.send(JSON.stringify({
      type: 'resume',
      session_token: conn.sessionToken,
      last_id: handlers.lastId(),
    }));
  } else {
    ready();
    handlers.noSession();
  }
}

function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch {
    return; // The server only sends JSON; ignore anything else rather than break the page.
  }
  if (message.type === 'connected') onConnected(message);
  else if (message.type === 'resumed') onResumed(message);
  else if (message.type === 'chat') receiveChat(message);
  else if (message.type === 'error' && message.code === 'SESSION_EXPIRED') onSessionExpired();
  else if (message.type === 'error' && message.code === 'UNAVAILABLE' && conn.resuming) {
    onResumeUnavailable();
  } else handlers.message(message);
}

function onConnected(message) {
  if (!message.session_token) return; // A protocol v1 server: no resuming.
  // While resuming, this connection's own new session is only a fallback: the server keeps
  // our old token on a successful resume.
  if (conn.resuming) conn.freshToken = message.session_token;
  else rememberSession(message.session_token);
}

/** Our session is back: the same name, room and seat, plus what was said meanwhile. */
function onResumed(message) {
  conn.resuming = false;
  conn.freshToken = null;
  ready();
  handlers.resumed(message);
  if (message.room_code) {
    // The rest of `missed`, if it did not fit in the frame, follows as `more` chat frames.
    conn.replayPending = message.more || 0;
    if (conn.replayPending === 0) handlers.replayDone();
  }
}

function onSessionExpired() {
  // The connection carries on as a new client, with the session `connected` offered.
  conn.resuming = false;
  rememberSession(conn.freshToken);
  conn.freshToken = null;
  ready();
  handlers.sessionExpired();
}

/**
 * The server could not reach its store to resume our session: the session is not lost, only
 * not back yet. `resume` must be the first message of a connection, so this one is of no more
 * use: close it, and the usual delay later a new one tries again.
 */
function onResumeUnavailable() {
  conn.socket.close();
}

/** The connection works and the server knows who we are: the next drop starts a new count. */
function ready() {
  conn.attempts = 0;
  conn.outage = false;
  handlers.ready();
}

/**
 * The socket closed: the network dropped, the server went away or restarted, or another
 * tab took our session over. Only the last one, and a close the server made on purpose,
 * are final; everything else is retried by itself.
 */
function onClose(event) {
  const wasOpen = conn.wasOpen;
  conn.socket = null;
  conn.resuming = false;
  // A replay cut short by the drop is over: the next `resumed` says afresh what follows it.
  conn.replayPending = 0;

  if (event.code === CLOSE_RESUMED_ELSEWHERE) {
    // The other tab now holds the session; coming back by ourselves would take it away from
    // there, which would then come back here, and so on. The user decides.
    handlers.closed({ why: 'elsewhere' });
    return;
  }
  if (event.code === CLOSE_POLICY) {
    // Closed on purpose (for instance no name was chosen in time): trying again by
    // ourselves would only repeat it.
    handlers.closed({ why: 'refused', reason: event.reason });
    return;
  }

  const outageBegins = wasOpen && !conn.outage;
  if (outageBegins) conn.outage = true;
  handlers.closed({ why: 'lost', outageBegins, outage: conn.outage });
  conn.reconnectTimer = setTimeout(connect, reconnectDelayAfter(event.code));
  conn.attempts += 1;
}

/**
 * How long to wait before reconnecting after a close with `code`. A node that is being
 * restarted (a rolling upgrade) says so with 1012 while the other nodes are up: come back at
 * once, rather than leave the person waiting out a delay meant for a server that is down.
 * Only the first attempt is at once: should it fail too, the usual delays follow, so a page
 * never hammers a server that keeps closing it.
 */
function reconnectDelayAfter(code) {
  if (code === CLOSE_SERVICE_RESTART && conn.attempts === 0) return 0;
  return reconnectDelay(conn.attempts);
}

/** How long to wait before attempt number `attempt` (0 first): exponential, with jitter. */
function reconnectDelay(attempt) {
  const base = Math.min(RECONNECT_MAX_MS, RECONNECT_FIRST_MS * 2 ** attempt);
  return base * (1 - RECONNECT_JITTER + Math.random() * 2 * RECONNECT_JITTER);
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
  conn.sessionToken = token;
  try {
    if (token) sessionStorage.setItem('chat.session', token);
    else sessionStorage.removeItem('chat.session');
  } catch {
    // Storage blocked: a reload starts afresh, the in-memory token still covers drops.
  }
}
