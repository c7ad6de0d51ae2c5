//! End-to-end encryption as docs/protocol.md describes it, written from the document rather than
//! from the web client (with ring and base64, not WebCrypto), so that the tests hold the page and
//! the document to each other: link keys, a room's key, the key check, and sealing and opening
//! envelopes of both versions (v2, the web client's, with its run id, sequence number and
//! padding; v1, an older client's, which the server still relays).
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

// ---------------------------------------------------------------------------------------------
// Scheme v2 (docs/protocol.md, "The scheme"): what the web client makes now. The v1 functions
// above stay for the tests of the server's v1 support (an older client's envelopes).
// ---------------------------------------------------------------------------------------------

/// What every v2 envelope starts with.
pub const PREFIX_V2: &str = "v2.";

/// HKDF's info for a v2 room key.
pub const LABEL_V2: &str = "chat-server e2e v2";

/// HKDF's info for the key check.
pub const CHECK_LABEL: &str = "chat-server e2e v2 key check";

/// The key kinds of a v2 envelope's first byte.
pub const KIND_ROOM: u8 = 0x00;
pub const KIND_SESSION: u8 = 0x01;

/// The types of a v2 plaintext.
pub const TYPE_TEXT: u8 = 0x01;
pub const TYPE_HELLO: u8 = 0x02;

/// Bytes of a run id, and of a v2 envelope's clear header (key kind and run id).
pub const RUN_BYTES: usize = 8;
const HEADER_BYTES: usize = 1 + RUN_BYTES;

/// The padded plaintext is a whole number of blocks of this many bytes.
pub const PAD_BYTES: usize = 64;

/// An HKDF output length of `n` bytes, for ring.
struct Len(usize);

impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn link_key_bytes(link_key: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(link_key)
        .expect("a link key is base64url without padding")
}

/// The key check of a link key: 16 bytes of HKDF-SHA-256 (empty salt, [`CHECK_LABEL`]) in
/// base64url, 22 characters.
pub fn key_check(link_key: &str) -> String {
    let prk = Salt::new(HKDF_SHA256, &[]).extract(&link_key_bytes(link_key));
    let info = [CHECK_LABEL.as_bytes()];
    let mut check = [0; 16];
    prk.expand(&info, Len(16))
        .and_then(|okm| okm.fill(&mut check))
        .expect("16 bytes is a valid HKDF-SHA-256 output length");
    URL_SAFE_NO_PAD.encode(check)
}

/// Room `code`'s v2 AES-256-GCM key: HKDF-SHA-256 of the link key, salt the code, info
/// [`LABEL_V2`].
pub fn room_key_v2(link_key: &str, code: &str) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, code.as_bytes()).extract(&link_key_bytes(link_key));
    let info = [LABEL_V2.as_bytes()];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("32 bytes is a valid HKDF-SHA-256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// A fresh run id.
pub fn new_run() -> [u8; RUN_BYTES] {
    random_bytes(RUN_BYTES)
        .try_into()
        .expect("as many bytes as asked for")
}

/// What a v2 envelope says once opened.
#[derive(Debug, PartialEq)]
pub struct Opened {
    pub kind: u8,
    pub run: [u8; RUN_BYTES],
    pub seq: u32,
    pub kind_of_body: u8,
    pub body: Vec<u8>,
}

impl Opened {
    /// The text of a text message, if this is one.
    pub fn text(&self) -> Option<&str> {
        (self.kind_of_body == TYPE_TEXT)
            .then(|| std::str::from_utf8(&self.body).ok())
            .flatten()
    }
}

/// The additional authenticated data of a v2 envelope.
fn additional_data_v2(code: &str, from: &str, header: &[u8]) -> Vec<u8> {
    let mut aad = format!("v2\0{code}\0{from}\0").into_bytes();
    aad.extend_from_slice(header);
    aad
}

/// Seals one v2 plaintext with everything given (the test vectors choose the IV; a real
/// client never does): `kind` names the kind of `key`.
#[allow(clippy::too_many_arguments)] // Each is a field of the envelope, named as the document names it.
pub fn seal_v2_with(
    key: &LessSafeKey,
    code: &str,
    from: &str,
    kind: u8,
    run: [u8; RUN_BYTES],
    seq: u32,
    kind_of_body: u8,
    body: &[u8],
    iv: [u8; NONCE_LEN],
) -> String {
    let mut header = vec![kind];
    header.extend_from_slice(&run);
    let blocks = (7 + body.len()).div_ceil(PAD_BYTES);
    let mut plain = Vec::with_capacity(blocks * PAD_BYTES + 16);
    plain.extend_from_slice(&seq.to_be_bytes());
    plain.push(kind_of_body);
    plain.extend_from_slice(
        &u16::try_from(body.len())
            .expect("a body is at most 16,384 bytes")
            .to_be_bytes(),
    );
    plain.extend_from_slice(body);
    plain.resize(blocks * PAD_BYTES, 0);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(iv),
        Aad::from(additional_data_v2(code, from, &header)),
        &mut plain,
    )
    .expect("a chat message is far under AES-GCM's limit");
    let mut envelope = header;
    envelope.extend_from_slice(&iv);
    envelope.extend(plain);
    format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(envelope))
}

/// Seals `text` as message `seq` of run `run` under the room key, with a fresh random IV.
pub fn seal_v2(
    key: &LessSafeKey,
    code: &str,
    from: &str,
    run: [u8; RUN_BYTES],
    seq: u32,
    text: &str,
) -> String {
    let iv = random_bytes(NONCE_LEN)
        .try_into()
        .expect("as many bytes as asked for");
    seal_v2_with(
        key,
        code,
        from,
        KIND_ROOM,
        run,
        seq,
        TYPE_TEXT,
        text.as_bytes(),
        iv,
    )
}

/// The clear header of a v2 envelope: its key kind and run id, if it is one.
pub fn header_v2(envelope: &str) -> Option<(u8, [u8; RUN_BYTES])> {
    let bytes = URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX_V2)?)
        .ok()?;
    let run = bytes.get(1..HEADER_BYTES)?.try_into().ok()?;
    Some((*bytes.first()?, run))
}

/// Opens a v2 envelope said by `from` in room `code` with `key`; `None` if it does not verify
/// or is not well padded.
pub fn open_v2(key: &LessSafeKey, code: &str, from: &str, envelope: &str) -> Option<Opened> {
    let bytes = URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX_V2)?)
        .ok()?;
    let (header, rest) = bytes.split_at_checked(HEADER_BYTES)?;
    let (iv, sealed) = rest.split_at_checked(NONCE_LEN)?;
    let mut in_out = sealed.to_vec();
    let plain = key
        .open_in_place(
            Nonce::try_assume_unique_for_key(iv).ok()?,
            Aad::from(additional_data_v2(code, from, header)),
            &mut in_out,
        )
        .ok()?;
    if plain.len() < PAD_BYTES || plain.len() % PAD_BYTES != 0 {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([plain[5], plain[6]]));
    let body = plain.get(7..7 + length)?;
    if plain[7 + length..].iter().any(|&byte| byte != 0) {
        return None;
    }
    Some(Opened {
        kind: header[0],
        run: header[1..].try_into().ok()?,
        seq: u32::from_be_bytes(plain[..4].try_into().ok()?),
        kind_of_body: plain[4],
        body: body.to_vec(),
    })
}

/// `envelope` (v2) with one bit of its ciphertext flipped: still well formed, no longer genuine.
pub fn tamper_v2(envelope: &str) -> String {
    let mut bytes = URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX_V2).expect("a v2 envelope"))
        .expect("base64url");
    bytes[HEADER_BYTES + NONCE_LEN] ^= 0x01;
    format!("{PREFIX_V2}{}", URL_SAFE_NO_PAD.encode(bytes))
}
