// End-to-end encryption of a room's messages, with the browser's WebCrypto and nothing else.
//
// A room created end-to-end encrypted has a random key that lives in its invite link's
// fragment (`/?room=CODE#key=…`), which browsers never send to a server, and in this tab's
// sessionStorage, so that a reload or a reconnect keeps it. Each message is sealed into an
// envelope the server relays and stores without being able to read it. docs/protocol.md gives
// the exact scheme (which other clients are held to), docs/security.md the reasoning. In short
// (scheme v2):
//
// - the link key (at least 128 random bits; this page makes 256) gives, through HKDF-SHA-256,
//   a *key check* (label "chat-server e2e v2 key check", no salt: 16 bytes the server keeps
//   with the room, so that a page with a wrong link finds out at join) and the *room key*
//   (salt the room code, label "chat-server e2e v2": AES-256-GCM);
// - each tab has a *run*: 8 random bytes it makes once per room, and a sequence number that
//   grows by one with each envelope it seals; both are under the authentication, so a server
//   cannot repeat, reorder or withhold a message unnoticed;
// - the plaintext is padded with zeros to a multiple of 64 bytes, so an envelope tells the
//   length of a message only to 64 bytes;
// - once both people are present, each page sends a *hello* (ephemeral public keys: P-256,
//   and X25519 where the browser has it; sealed under the room key, so the server can neither
//   forge nor swap one), and later messages are sealed under *session keys* derived from the key agreement: a link that
//   leaks later does not open them (forward secrecy). Both pages show a *safety number*
//   derived from the handshake.
//
// No page, no socket: the wiring (main.js) decides what to seal and open, and what to show.

/** What every envelope starts with: the version of the scheme. */
const PREFIX = 'v2.';
/** The HKDF info of the room key: names what the key is for. */
const ROOM_LABEL = 'chat-server e2e v2';
/** The HKDF info of the key check: its own label, so it is independent of every other key. */
const CHECK_LABEL = 'chat-server e2e v2 key check';
/** What the handshake's transcript starts with. */
const HANDSHAKE_LABEL = 'chat-server e2e v2 handshake';
/** The HKDF info of a session's message key, before the sender's run id. */
const MESSAGE_KEY_LABEL = 'chat-server e2e v2 message key';
/** What the safety number's hash starts with. */
const SAFETY_LABEL = 'chat-server e2e v2 safety number';
/** Bytes of random key this page puts in a link: 256 bits, the AES key's own size. */
const KEY_BYTES = 32;
/** The fewest bytes a link key may have: 128 bits, as the protocol requires. */
const MIN_KEY_BYTES = 16;
/** Bytes of AES-GCM's nonce, fresh and random for every message. */
const IV_BYTES = 12;
/** Bytes of AES-GCM's authentication tag, at the end of the ciphertext. */
const TAG_BYTES = 16;
/** Bytes of a run id. */
const RUN_BYTES = 8;
/** Bytes of an envelope's clear header: the key kind and the run id. */
const HEADER_BYTES = 1 + RUN_BYTES;
/** The padded plaintext is a whole number of these blocks: the length shows only to 64 bytes. */
const PAD_BYTES = 64;
/** Bytes of the padded plaintext's own header: sequence (4), type (1), body length (2). */
const BODY_OFFSET = 7;
/** The key kinds of an envelope's first byte. */
export const KIND = { room: 0x00, session: 0x01 };
/** The types of a plaintext: a message's text, or a hello of the handshake. */
export const TYPE = { text: 0x01, hello: 0x02 };
/** The curve bytes of a hello: P-256, which every page offers, and X25519, which a page offers
 * after it where its browser has it; two pages that both offer X25519 agree with it. */
const CURVE_P256 = 0x01;
const CURVE_X25519 = 0x02;
/** Bytes of an uncompressed P-256 point (0x04 ‖ X ‖ Y). */
const P256_POINT_BYTES = 65;
/** Bytes of an X25519 public key. */
const X25519_KEY_BYTES = 32;
/** Where this tab keeps what it holds for a room: this prefix, what it is, and the room code. */
const STORAGE_PREFIX = 'chat.';

/** What this tab keeps by storage name, for when sessionStorage is blocked (a reload loses it). */
const memory = new Map();

/**
 * Whether this page can encrypt at all: browsers offer WebCrypto's `subtle` only to secure
 * pages (https, or the local machine), where nobody on the network can change the page.
 */
export function available() {
  return Boolean(globalThis.crypto && globalThis.crypto.subtle);
}

/** A fresh link key: 256 random bits, in base64url. */
export function newKey() {
  return toBase64url(crypto.getRandomValues(new Uint8Array(KEY_BYTES)));
}

/** Whether `text` is a usable link key: base64url of at least 128 bits. */
export function isKey(text) {
  const bytes = typeof text === 'string' ? fromBase64url(text) : null;
  return bytes !== null && bytes.length >= MIN_KEY_BYTES;
}

// ---------------------------------------------------------------------------------------
// What this tab keeps for a room (sessionStorage: the tab's own, gone when it closes)
// ---------------------------------------------------------------------------------------

function keep(what, code, value) {
  const name = `${STORAGE_PREFIX}${what}.${code}`;
  memory.set(name, value);
  try {
    sessionStorage.setItem(name, value);
    return true;
  } catch {
    return false;
  }
}

function kept(what, code) {
  const name = `${STORAGE_PREFIX}${what}.${code}`;
  if (memory.has(name)) return memory.get(name);
  try {
    return sessionStorage.getItem(name);
  } catch {
    return null;
  }
}

function drop(what, code) {
  const name = `${STORAGE_PREFIX}${what}.${code}`;
  memory.delete(name);
  try {
    sessionStorage.removeItem(name);
  } catch {
    // Storage blocked: nothing was kept there.
  }
}

/**
 * Keeps `key` as the link key of room `code` for this tab. Returns whether storage took it,
 * that is whether a reload will still have it.
 */
export function rememberKey(code, key) {
  return keep('key', code, key);
}

/** The link key this tab holds for room `code`, or null. */
export function keyFor(code) {
  const key = kept('key', code);
  return isKey(key) ? key : null;
}

/**
 * Forgets everything this tab holds for room `code`: the link key, the run and its sequence
 * number, the handshake. Only ever on the person's own word (leaving), never on the server's.
 */
export function forgetRoom(code) {
  for (const what of STORED) drop(what, code);
}

/** Everything `forgetRoom` forgets. */
const STORED = ['key', 'run', 'seq', 'eph', 'hello', 'hello-sent', 'ready', 'failed'];

/**
 * Keeps that room `code` failed (`why`: `'link'` or `'server'`), so that a reload of the tab
 * does not take the server's word for it again.
 */
export function markFailed(code, why) {
  keep('failed', code, why);
}

/** Why room `code` failed in this tab, or null. */
export function failureIn(code) {
  return kept('failed', code);
}

/**
 * Forgets the other person's hello and the session with it in room `code`: they left, and
 * whoever comes next is another run, with a handshake of its own.
 */
export function forgetPeer(code) {
  drop('hello', code);
  drop('ready', code);
}

/** Keeps that this run sent its hello in room `code`. */
export function markHelloSent(code) {
  keep('hello-sent', code, '1');
}

/** Whether this run sent its hello in room `code`. */
export function helloSent(code) {
  return kept('hello-sent', code) === '1';
}

/**
 * Keeps that our messages in room `code` go under the session with the peer's run `peerRun`
 * (hex): their hello named ours, or ours went out after theirs.
 */
export function markReady(code, peerRun) {
  keep('ready', code, peerRun);
}

/** The peer run (hex) our messages in room `code` go under the session of, or null. */
export function readyWith(code) {
  return kept('ready', code);
}

/**
 * This tab's run id in room `code` (8 random bytes, made once and kept for the tab's life,
 * so that a reload carries on the same run and a new tab starts a new one).
 */
export function runFor(code) {
  let run = fromHex(kept('run', code));
  if (run === null || run.length !== RUN_BYTES) {
    run = crypto.getRandomValues(new Uint8Array(RUN_BYTES));
    keep('run', code, toHex(run));
  }
  return run;
}

/**
 * The next sequence number of this tab's run in room `code`: 1 first, then one more for each
 * envelope sealed, whatever its kind or type. Kept before it is used, so a reload never seals
 * two envelopes under one number.
 */
export function nextSequence(code) {
  const next = (Number(kept('seq', code)) || 0) + 1;
  keep('seq', code, String(next));
  return next;
}

// ---------------------------------------------------------------------------------------
// Keys from the link key
// ---------------------------------------------------------------------------------------

/** HKDF-SHA-256 of the link key into `bits` bits, with `salt` and `info`. */
async function linkKeyBits(linkKey, salt, info, bits) {
  const secret = fromBase64url(linkKey);
  if (secret === null || secret.length < MIN_KEY_BYTES) throw new Error('not a link key');
  const material = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveBits']);
  const derived = await crypto.subtle.deriveBits(
    { name: 'HKDF', hash: 'SHA-256', salt, info: utf8(info) },
    material,
    bits,
  );
  return new Uint8Array(derived);
}

/**
 * The key check of a link key: 16 bytes of HKDF-SHA-256 (no salt, its own label) in base64url,
 * 22 characters. The server keeps it with the room and gives it back to whoever joins, so a
 * page with a wrong link finds out before it shows anything. It reveals nothing of the key.
 */
export async function keyCheck(linkKey) {
  return toBase64url(await linkKeyBits(linkKey, new Uint8Array(0), CHECK_LABEL, 128));
}

/**
 * The room key of room `code`: HKDF-SHA-256 of the link key with the room code as salt, as an
 * AES-GCM key. Not extractable: the page's own script cannot read it back.
 */
export async function roomKey(linkKey, code) {
  const bits = await linkKeyBits(linkKey, utf8(code), ROOM_LABEL, 256);
  return crypto.subtle.importKey('raw', bits, 'AES-GCM', false, ['encrypt', 'decrypt']);
}

// ---------------------------------------------------------------------------------------
// Envelopes
// ---------------------------------------------------------------------------------------

/**
 * Seals one plaintext into an envelope. `m` says what: `code` and `from` (the room and the
 * sender's name, as the server writes them), `kind` (KIND.room or KIND.session, the kind of
 * `key`), `run` (the run id), `seq`, `type` (TYPE.text or TYPE.hello) and `body` (bytes).
 * `iv` is for the test vectors only: otherwise it is fresh and random, as it must be.
 */
export async function sealEnvelope(key, m, iv = crypto.getRandomValues(new Uint8Array(IV_BYTES))) {
  const header = new Uint8Array(HEADER_BYTES);
  header[0] = m.kind;
  header.set(m.run, 1);
  const sealed = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: additionalData(m.code, m.from, header) },
    key,
    pad(m.seq, m.type, m.body),
  );
  return PREFIX + toBase64url(concat(header, iv, new Uint8Array(sealed)));
}

/**
 * Seals `text` with everything given: what the test vectors of docs/protocol.md are checked
 * against (a page never chooses its IV). `linkKey` and `run` in base64url and hex.
 */
export async function sealTextForVector(linkKey, code, from, runHex, seq, ivHex, text) {
  const key = await roomKey(linkKey, code);
  const m = { code, from, kind: KIND.room, run: fromHex(runHex), seq, type: TYPE.text, body: utf8(text) };
  return sealEnvelope(key, m, fromHex(ivHex));
}

/**
 * The clear header of an envelope: `{ kind, run }`, with the bytes to open it, or null if it
 * is not a v2 envelope. (A v1 envelope is never taken as genuine by this page.)
 */
export function readHeader(envelope) {
  if (typeof envelope !== 'string' || !envelope.startsWith(PREFIX)) return null;
  const bytes = fromBase64url(envelope.slice(PREFIX.length));
  if (bytes === null || bytes.length < HEADER_BYTES + IV_BYTES + PAD_BYTES + TAG_BYTES) return null;
  if (bytes[0] !== KIND.room && bytes[0] !== KIND.session) return null;
  return { kind: bytes[0], run: bytes.slice(1, HEADER_BYTES), bytes };
}

/**
 * Opens an envelope whose header is `header` (see `readHeader`), said by `from` in room `code`:
 * `{ seq, type, body }`, or null if it was changed, sealed with another key, or for another
 * room or sender, or is not well padded.
 */
export async function openEnvelope(key, code, from, header) {
  const { bytes } = header;
  try {
    const plain = new Uint8Array(await crypto.subtle.decrypt(
      {
        name: 'AES-GCM',
        iv: bytes.subarray(HEADER_BYTES, HEADER_BYTES + IV_BYTES),
        additionalData: additionalData(code, from, bytes.subarray(0, HEADER_BYTES)),
      },
      key,
      bytes.subarray(HEADER_BYTES + IV_BYTES),
    ));
    return unpad(plain);
  } catch {
    return null; // The tag did not verify: never show it.
  }
}

/** The text of a type-1 body, or null if it is not UTF-8. */
export function textOf(body) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(body);
  } catch {
    return null;
  }
}

export function utf8(text) {
  return new TextEncoder().encode(text);
}

/**
 * What each envelope is bound to: "v2", the room, the sender (joined by NUL, which neither a
 * room code nor a username can contain), and its clear header (the key kind and the run id).
 */
function additionalData(code, from, header) {
  return concat(utf8(`v2\u0000${code}\u0000${from}\u0000`), header);
}

/** The padded plaintext: sequence, type, body length, body, zeros to a multiple of 64 bytes. */
function pad(seq, type, body) {
  const length = Math.ceil((BODY_OFFSET + body.length) / PAD_BYTES) * PAD_BYTES;
  const plain = new Uint8Array(length);
  const view = new DataView(plain.buffer);
  view.setUint32(0, seq);
  plain[4] = type;
  view.setUint16(5, body.length);
  plain.set(body, BODY_OFFSET);
  return plain;
}

/** The fields of a padded plaintext, or null if it is not one (the padding must be zeros). */
function unpad(plain) {
  if (plain.length < PAD_BYTES || plain.length % PAD_BYTES !== 0) return null;
  const view = new DataView(plain.buffer, plain.byteOffset, plain.byteLength);
  const length = view.getUint16(5);
  if (BODY_OFFSET + length > plain.length) return null;
  if (plain.subarray(BODY_OFFSET + length).some((byte) => byte !== 0)) return null;
  return {
    seq: view.getUint32(0),
    type: plain[4],
    body: plain.slice(BODY_OFFSET, BODY_OFFSET + length),
  };
}

// ---------------------------------------------------------------------------------------
// The handshake: forward secrecy, and the safety number
// ---------------------------------------------------------------------------------------

/**
 * This run's ephemeral key pairs in room `code`: P-256, and X25519 where the browser has it.
 * Made once, kept in sessionStorage (as JWK) so a reload keeps them, dropped with the room.
 * Returns `{ privateKey, x25519, publicRaw }`: the P-256 private key, the X25519 one (or null),
 * and the *offer* a hello carries, 0x01 ‖ the P-256 point [‖ 0x02 ‖ the X25519 key].
 * (Extractable only so that the tab can keep them across a reload; they never leave the tab.)
 */
export async function ephemeralFor(code) {
  const stored = kept('eph', code);
  if (stored) {
    try {
      return await importEphemeral(JSON.parse(stored));
    } catch {
      // Unreadable: make new ones below (the peer will get a new hello).
    }
  }
  const p256 = await crypto.subtle.generateKey(
    { name: 'ECDH', namedCurve: 'P-256' }, true, ['deriveBits']);
  // X25519 is in WebCrypto since Chromium 133, Firefox 130 and Safari 17; elsewhere P-256 alone.
  const x25519 = await crypto.subtle
    .generateKey({ name: 'X25519' }, true, ['deriveBits'])
    .catch(() => null);
  const jwks = {
    p256: await crypto.subtle.exportKey('jwk', p256.privateKey),
    x25519: x25519 ? await crypto.subtle.exportKey('jwk', x25519.privateKey) : null,
  };
  keep('eph', code, JSON.stringify(jwks));
  return importEphemeral(jwks);
}

/** The key pairs of `ephemeralFor` from their private JWKs (each holds its public part). */
async function importEphemeral(jwks) {
  const p256 = { name: 'ECDH', namedCurve: 'P-256' };
  const privateKey = await crypto.subtle.importKey('jwk', jwks.p256, p256, true, ['deriveBits']);
  const { kty, crv, x, y } = jwks.p256;
  const p256Public = await crypto.subtle.importKey('jwk', { kty, crv, x, y, ext: true }, p256, true, []);
  let publicRaw = concat(Uint8Array.of(CURVE_P256), await rawKey(p256Public));
  let x25519 = null;
  if (jwks.x25519) {
    const { kty: okp, crv: curve, x: point } = jwks.x25519;
    x25519 = await crypto.subtle.importKey('jwk', jwks.x25519, { name: 'X25519' }, true, ['deriveBits']);
    const x25519Public = await crypto.subtle.importKey(
      'jwk', { kty: okp, crv: curve, x: point, ext: true }, { name: 'X25519' }, true, []);
    publicRaw = concat(publicRaw, Uint8Array.of(CURVE_X25519), await rawKey(x25519Public));
  }
  return { privateKey, x25519, publicRaw };
}

async function rawKey(publicKey) {
  return new Uint8Array(await crypto.subtle.exportKey('raw', publicKey));
}

/** A hello's body: the peer run last seen (or zeros), then this run's offer (its public keys). */
export function helloBody(peerRun, publicRaw) {
  return concat(peerRun || new Uint8Array(RUN_BYTES), publicRaw);
}

/**
 * The fields of a hello's body, `{ seenRun, publicRaw }` (`publicRaw`: the sender's offer), or
 * null if it is not one we know: the offer must be P-256's point, then X25519's key or nothing.
 */
export function readHello(body) {
  const offer = body.slice(RUN_BYTES);
  if (readOffer(offer) === null) return null;
  return { seenRun: body.slice(0, RUN_BYTES), publicRaw: offer };
}

/** An offer's public keys, `{ p256, x25519 }` (`x25519` null if not offered), or null. */
function readOffer(offer) {
  const p256End = 1 + P256_POINT_BYTES;
  if (offer.length < p256End || offer[0] !== CURVE_P256) return null;
  const p256 = offer.slice(1, p256End);
  if (offer.length === p256End) return { p256, x25519: null };
  if (offer.length === p256End + 1 + X25519_KEY_BYTES && offer[p256End] === CURVE_X25519) {
    return { p256, x25519: offer.slice(p256End + 1) };
  }
  return null;
}

/** Keeps the hello last opened from the peer in room `code` (run and public key), for a reload. */
export function rememberPeerHello(code, peerRun, publicRaw) {
  keep('hello', code, `${toHex(peerRun)}.${toHex(publicRaw)}`);
}

/** The peer's hello this tab kept for room `code`: `{ run, publicRaw }`, or null. */
export function peerHelloFor(code) {
  const [run, key] = (kept('hello', code) || '').split('.');
  const runBytes = fromHex(run);
  const publicRaw = fromHex(key);
  return runBytes && publicRaw ? { run: runBytes, publicRaw } : null;
}

/**
 * The session between this run (`myRun`, its ephemeral `mine`) and the peer's run `peerRun`
 * with offer `peerPublicRaw`, in room `code`: `{ sendKey, receiveKey, safetyNumber }`. X25519
 * when both offered it, else P-256. Throws if the peer's key does not import (not a point of
 * the curve) or the agreement fails (X25519's all-zero result from a small-order key).
 */
export async function session(code, myRun, mine, peerRun, peerPublicRaw) {
  const theirs = readOffer(peerPublicRaw);
  if (theirs === null) throw new Error('not an offer of public keys');
  let shared;
  if (mine.x25519 && theirs.x25519) {
    const peerPublic = await crypto.subtle.importKey(
      'raw', theirs.x25519, { name: 'X25519' }, false, []);
    shared = await crypto.subtle.deriveBits({ name: 'X25519', public: peerPublic }, mine.x25519, 256);
  } else {
    const peerPublic = await crypto.subtle.importKey(
      'raw', theirs.p256, { name: 'ECDH', namedCurve: 'P-256' }, false, []);
    shared = await crypto.subtle.deriveBits(
      { name: 'ECDH', public: peerPublic }, mine.privateKey, 256);
  }
  // Each record is a run and its whole offer, whichever curve was used: a hello is sealed
  // under the room key, so nobody without the link can strip an offer to force P-256, and
  // the transcript (so the keys and the safety number) covers everything both offered.
  const records = [concat(myRun, mine.publicRaw), concat(peerRun, peerPublicRaw)];
  if (compareBytes(myRun, peerRun) > 0) records.reverse();
  const transcript = concat(utf8(`${HANDSHAKE_LABEL}\u0000${code}\u0000`), ...records);
  const salt = new Uint8Array(await crypto.subtle.digest('SHA-256', transcript));
  const material = await crypto.subtle.importKey('raw', shared, 'HKDF', false, ['deriveKey']);
  const keyOf = (run) => crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt, info: concat(utf8(MESSAGE_KEY_LABEL), run) },
    material,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
  const safety = new Uint8Array(await crypto.subtle.digest(
    'SHA-256', concat(utf8(`${SAFETY_LABEL}\u0000`), transcript)));
  return {
    sendKey: await keyOf(myRun),
    receiveKey: await keyOf(peerRun),
    safetyNumber: safetyNumber(safety),
  };
}

/** The first 5 bytes of `hash` as a number mod 10^12, in three groups of four digits. */
function safetyNumber(hash) {
  let value = 0n;
  for (const byte of hash.subarray(0, 5)) value = value * 256n + BigInt(byte);
  const digits = (value % 10n ** 12n).toString().padStart(12, '0');
  return `${digits.slice(0, 4)} ${digits.slice(4, 8)} ${digits.slice(8)}`;
}

// ---------------------------------------------------------------------------------------
// Bytes
// ---------------------------------------------------------------------------------------

export function sameBytes(a, b) {
  return a !== null && b !== null && a.length === b.length && compareBytes(a, b) === 0;
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i += 1) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

function concat(...parts) {
  const all = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
  let at = 0;
  for (const part of parts) {
    all.set(part, at);
    at += part.length;
  }
  return all;
}

export function toHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/** The bytes of a hex string, or null. */
export function fromHex(text) {
  if (typeof text !== 'string' || !/^(?:[0-9a-f]{2})*$/.test(text)) return null;
  return Uint8Array.from(text.match(/../g) || [], (pair) => parseInt(pair, 16));
}

/** Bytes as base64url without padding (RFC 4648, section 5). */
function toBase64url(bytes) {
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The bytes of base64url without padding, or null if `text` is not that. */
function fromBase64url(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) return null;
  const base64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const binary = atob(base64 + '='.repeat((4 - (base64.length % 4)) % 4));
  return Uint8Array.from(binary, (char) => char.charCodeAt(0));
}
