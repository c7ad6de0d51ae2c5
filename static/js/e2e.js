// End-to-end encryption of a room's messages, with the browser's WebCrypto and nothing else.
//
// A room created end-to-end encrypted has a random key that lives in its invite link's
// fragment (`/?room=CODE#key=…`), which browsers never send to a server, and in this tab's
// sessionStorage, so that a reload or a reconnect keeps it. Each message is sealed into an
// envelope the server relays and stores without being able to read it. docs/protocol.md gives
// the exact scheme (which other clients are held to), docs/security.md the reasoning:
//
// - the link key (at least 128 random bits; this page makes 256) goes through HKDF-SHA-256,
//   with the room code as salt and the fixed label "chat-server e2e v1" as info, to an
//   AES-GCM key of 256 bits: each room has its own key even if two links shared theirs;
// - a message is its UTF-8 sealed with AES-256-GCM under a fresh random 96-bit IV, with the
//   additional authenticated data "v1" NUL room code NUL sender's name (UTF-8), so an
//   envelope moved to another room or shown as another sender's fails to open;
// - the envelope is "v1." followed by base64url without padding of IV ‖ ciphertext ‖ tag.
//
// No page, no socket: the wiring (main.js) decides what to seal and open, and what to show.

/** What every envelope starts with: the version of the scheme. */
const PREFIX = 'v1.';
/** The HKDF info: names what the key is for, so it can never be mistaken for another use. */
const LABEL = 'chat-server e2e v1';
/** Bytes of random key this page puts in a link: 256 bits, the AES key's own size. */
const KEY_BYTES = 32;
/** The fewest bytes a link key may have: 128 bits, as the protocol requires. */
const MIN_KEY_BYTES = 16;
/** Bytes of AES-GCM's nonce, fresh and random for every message. */
const IV_BYTES = 12;
/** Bytes of AES-GCM's authentication tag, at the end of the ciphertext. */
const TAG_BYTES = 16;
/** Where a room's link key is kept in sessionStorage: this prefix and the room code. */
const STORAGE_PREFIX = 'chat.key.';

/** Link keys by room code, for when sessionStorage is blocked (a reload then loses them). */
const keys = new Map();

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

/**
 * Keeps `key` as the link key of room `code` for this tab: in memory, and in sessionStorage,
 * which is the tab's own and goes with it (not the storage every tab of the site shares and
 * keeps). Returns whether storage took it, that is whether a reload will still have it.
 */
export function rememberKey(code, key) {
  keys.set(code, key);
  try {
    sessionStorage.setItem(STORAGE_PREFIX + code, key);
    return true;
  } catch {
    return false;
  }
}

/** The link key this tab holds for room `code`, or null. */
export function keyFor(code) {
  if (keys.has(code)) return keys.get(code);
  try {
    const stored = sessionStorage.getItem(STORAGE_PREFIX + code);
    return isKey(stored) ? stored : null;
  } catch {
    return null;
  }
}

/** Forgets the link key of room `code`. */
export function forgetKey(code) {
  keys.delete(code);
  try {
    sessionStorage.removeItem(STORAGE_PREFIX + code);
  } catch {
    // Storage blocked: nothing was kept there.
  }
}

/**
 * The AES-GCM key of room `code` from its link key: HKDF-SHA-256 with the room code as salt
 * and the fixed label as info. Not extractable: the page's own script cannot read it back.
 */
export async function roomKey(linkKey, code) {
  const secret = fromBase64url(linkKey);
  if (secret === null || secret.length < MIN_KEY_BYTES) throw new Error('not a link key');
  const material = await crypto.subtle.importKey('raw', secret, 'HKDF', false, ['deriveKey']);
  return crypto.subtle.deriveKey(
    { name: 'HKDF', hash: 'SHA-256', salt: utf8(code), info: utf8(LABEL) },
    material,
    { name: 'AES-GCM', length: 256 },
    false,
    ['encrypt', 'decrypt'],
  );
}

/** Seals `text`, said by `from` in room `code`, into an envelope. */
export async function seal(key, code, from, text) {
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const sealed = await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: additionalData(code, from) },
    key,
    utf8(text),
  );
  const envelope = new Uint8Array(IV_BYTES + sealed.byteLength);
  envelope.set(iv);
  envelope.set(new Uint8Array(sealed), IV_BYTES);
  return PREFIX + toBase64url(envelope);
}

/**
 * Opens an envelope said by `from` in room `code`: its text, or null if it is not an envelope,
 * was changed, was sealed with another key, or for another room or sender.
 */
export async function open(key, code, from, envelope) {
  if (typeof envelope !== 'string' || !envelope.startsWith(PREFIX)) return null;
  const bytes = fromBase64url(envelope.slice(PREFIX.length));
  if (bytes === null || bytes.length < IV_BYTES + TAG_BYTES) return null;
  try {
    const plain = await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: bytes.subarray(0, IV_BYTES), additionalData: additionalData(code, from) },
      key,
      bytes.subarray(IV_BYTES),
    );
    return new TextDecoder('utf-8', { fatal: true }).decode(plain);
  } catch {
    return null; // The tag did not verify (or the text is not UTF-8): never show it.
  }
}

/**
 * What each envelope is bound to: the scheme's version, the room and the sender, joined by
 * NUL, which neither a room code nor a username can contain, so no two pairs encode alike.
 */
function additionalData(code, from) {
  return utf8(`v1\u0000${code}\u0000${from}`);
}

function utf8(text) {
  return new TextEncoder().encode(text);
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
