//! End-to-end encryption as docs/protocol.md describes it, written from the document rather than
//! from the web client (with ring and base64, not WebCrypto), so that the tests hold the page and
//! the document to each other: link keys, a room's key, and sealing and opening envelopes.
#![allow(dead_code)] // Every test binary compiles this module; only some use each part.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, Salt};
use ring::rand::{SecureRandom, SystemRandom};

/// HKDF's info: the fixed label of the scheme.
pub const LABEL: &str = "chat-server e2e v1";

/// What every envelope starts with.
pub const PREFIX: &str = "v1.";

/// The longest envelope the server accepts, in characters (docs/protocol.md works it out).
pub const MAX_ENVELOPE_CHARS: usize = 21_886;

/// `n` random bytes.
fn random_bytes(n: usize) -> Vec<u8> {
    let mut bytes = vec![0; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random generator works");
    bytes
}

/// A fresh link key, as an invite link's `#key=` carries it: 256 random bits in base64url.
pub fn new_link_key() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes(32))
}

/// Room `code`'s AES-256-GCM key: HKDF-SHA-256 of the link key, with the code as salt and
/// [`LABEL`] as info.
pub fn room_key(link_key: &str, code: &str) -> LessSafeKey {
    let secret = URL_SAFE_NO_PAD
        .decode(link_key)
        .expect("a link key is base64url without padding");
    let pseudo_random_key = Salt::new(HKDF_SHA256, code.as_bytes()).extract(&secret);
    let info = [LABEL.as_bytes()];
    let okm = pseudo_random_key
        .expand(&info, &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// The additional authenticated data of an envelope said by `from` in room `code`.
fn additional_data(code: &str, from: &str) -> Vec<u8> {
    format!("v1\0{code}\0{from}").into_bytes()
}

/// Seals `text`, said by `from` in room `code`: `v1.` and base64url of IV ‖ ciphertext ‖ tag.
pub fn seal(key: &LessSafeKey, code: &str, from: &str, text: &str) -> String {
    let iv: [u8; NONCE_LEN] = random_bytes(NONCE_LEN)
        .try_into()
        .expect("as many bytes as asked for");
    let mut sealed = text.as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(iv),
        Aad::from(additional_data(code, from)),
        &mut sealed,
    )
    .expect("a chat message is far under AES-GCM's limit");
    let mut envelope = iv.to_vec();
    envelope.extend(sealed);
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(envelope))
}

/// Opens an envelope said by `from` in room `code`: its text, or `None` if it does not verify.
pub fn open(key: &LessSafeKey, code: &str, from: &str, envelope: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX)?)
        .ok()?;
    let (iv, sealed) = bytes.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(iv).ok()?;
    let mut in_out = sealed.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(additional_data(code, from)), &mut in_out)
        .ok()?;
    String::from_utf8(plain.to_vec()).ok()
}

/// `envelope` with one byte of its ciphertext changed (one bit of it flipped), still a
/// well-formed envelope: what a server that alters a message would relay.
pub fn tamper(envelope: &str) -> String {
    let mut bytes = URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX).expect("an envelope"))
        .expect("base64url");
    bytes[NONCE_LEN] ^= 0x01;
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// The key of an invite link (`…#key=KEY`), if it has one.
pub fn key_of_link(link: &str) -> Option<String> {
    let (_, fragment) = link.split_once('#')?;
    fragment
        .split('&')
        .find_map(|part| part.strip_prefix("key="))
        .map(str::to_owned)
}

/// Whether `content` has the shape of an envelope: `v1.` and base64url that decodes to at
/// least an IV and a tag.
pub fn is_envelope(content: &str) -> bool {
    content
        .strip_prefix(PREFIX)
        .and_then(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok())
        .is_some_and(|bytes| bytes.len() >= NONCE_LEN + 16)
}
