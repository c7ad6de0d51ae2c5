//! What the server knows of an end-to-end encrypted message: its shape, never its meaning.
//!
//! In a room created with `"encrypted": true`, a `chat`'s `content` is an *envelope* that the
//! browsers seal and open with a key the server never sees (it travels in the invite link's
//! fragment; docs/security.md says why). The server relays and stores the envelope exactly as
//! it came. All it can check is that the envelope has the documented shape and size, so that a
//! broken client is told at once and a room cannot be made to keep more than a message's worth
//! of bytes per message. Two versions are accepted (docs/protocol.md gives both layouts):
//!
//! ```text
//! v2.<base64url, no padding, of: key kind (1) ‖ sender run (8) ‖ IV (12) ‖ ciphertext of a
//!     plaintext padded to 64·k bytes ‖ tag (16)>           (the web client's, since issue 17)
//! v1.<base64url, no padding, of: IV (12) ‖ ciphertext ‖ tag (16)>       (older clients)
//! ```
//!
//! Whether the ciphertext is genuine, and whether the plaintext is empty or over 4,096
//! characters, only the pages that hold the key can tell; they check it themselves. So can
//! whether a v1 envelope should be believed at all: the web client never shows one as genuine.
//!
//! The other thing the server keeps for an encrypted room is its [`KeyCheck`]: a value derived
//! from the room's key that lets a page with a wrong link find out at once, and tells the
//! server nothing about the key.

use crate::error::{ErrorCode, Refusal};
use crate::server::MAX_CHAT_CHARS;

/// The bytes of AES-GCM's random nonce (its IV).
pub const IV_BYTES: usize = 12;

/// The bytes of AES-GCM's authentication tag, at the end of the ciphertext.
pub const TAG_BYTES: usize = 16;

/// The most bytes of UTF-8 a chat's text can have: 4,096 characters of at most 4 bytes each.
const MAX_TEXT_BYTES: usize = 4 * MAX_CHAT_CHARS;

/// Version 1: `v1.`, then IV ‖ ciphertext ‖ tag, the ciphertext as long as the text.
pub mod v1 {
    use super::{IV_BYTES, MAX_TEXT_BYTES, TAG_BYTES, base64url_len};

    /// What every v1 envelope starts with.
    pub const PREFIX: &str = "v1.";

    /// The fewest bytes a v1 envelope decodes to: the IV and the tag around an empty text.
    pub const MIN_SEALED_BYTES: usize = IV_BYTES + TAG_BYTES;

    /// The most bytes a v1 envelope decodes to: the IV and the tag around the longest text
    /// (AES-GCM's ciphertext is as long as its plaintext): 12 + 16,384 + 16 = 16,412 bytes.
    pub const MAX_SEALED_BYTES: usize = IV_BYTES + MAX_TEXT_BYTES + TAG_BYTES;

    /// The longest v1 envelope, in characters. 16,412 bytes are 5,470 groups of three bytes
    /// (4 characters each) and 2 bytes left over (3 characters): 21,883, and 3 for `v1.`: 21,886.
    pub const MAX_CHARS: usize = PREFIX.len() + base64url_len(MAX_SEALED_BYTES);
}

/// Version 2: `v2.`, then a 9-byte header in the clear (the key's kind and the sender's run),
/// the IV, and the ciphertext of a plaintext padded to a multiple of [`v2::PAD_BYTES`], so an
/// envelope tells the server the text's length only to within 64 bytes.
pub mod v2 {
    use super::{IV_BYTES, MAX_TEXT_BYTES, TAG_BYTES, base64url_len};

    /// What every v2 envelope starts with.
    pub const PREFIX: &str = "v2.";

    /// The header in the clear: the key's kind (1 byte) and the sender's run id (8 bytes).
    pub const HEADER_BYTES: usize = 1 + 8;

    /// The plaintext's own header: sequence number (4), type (1), body length (2).
    pub const PLAIN_HEADER_BYTES: usize = 4 + 1 + 2;

    /// The plaintext is padded with zeros to a multiple of this many bytes.
    pub const PAD_BYTES: usize = 64;

    /// Everything of a v2 envelope but its padded plaintext: 9 + 12 + 16 = 37 bytes.
    pub const FIXED_BYTES: usize = HEADER_BYTES + IV_BYTES + TAG_BYTES;

    /// The most padding blocks: the longest text with its header, 7 + 16,384 = 16,391 bytes,
    /// rounded up to 257 blocks of 64 (16,448 bytes).
    pub const MAX_BLOCKS: usize = (PLAIN_HEADER_BYTES + MAX_TEXT_BYTES).div_ceil(PAD_BYTES);

    /// The fewest bytes a v2 envelope decodes to: one block of plaintext: 101 bytes.
    pub const MIN_SEALED_BYTES: usize = FIXED_BYTES + PAD_BYTES;

    /// The most bytes a v2 envelope decodes to: 37 + 16,448 = 16,485 bytes.
    pub const MAX_SEALED_BYTES: usize = FIXED_BYTES + MAX_BLOCKS * PAD_BYTES;

    /// The longest v2 envelope, in characters: 16,485 bytes are exactly 5,495 groups of three,
    /// 21,980 characters, and 3 for `v2.`: 21,983.
    pub const MAX_CHARS: usize = PREFIX.len() + base64url_len(MAX_SEALED_BYTES);

    /// Whether an envelope of `bytes` bytes holds a whole number of padding blocks.
    pub(super) fn is_padded(bytes: usize) -> bool {
        bytes >= MIN_SEALED_BYTES && (bytes - FIXED_BYTES).is_multiple_of(PAD_BYTES)
    }
}

/// The longest envelope of any version, in characters: what a `chat` in an encrypted room may
/// carry at most (v2's 21,983).
pub const MAX_ENVELOPE_CHARS: usize = if v2::MAX_CHARS > v1::MAX_CHARS {
    v2::MAX_CHARS
} else {
    v1::MAX_CHARS
};

/// How many characters base64url without padding writes for `bytes` bytes.
const fn base64url_len(bytes: usize) -> usize {
    bytes / 3 * 4
        + match bytes % 3 {
            0 => 0,
            1 => 2,
            _ => 3,
        }
}

/// How many bytes `chars` characters of base64url without padding hold (a length that is 1
/// more than a multiple of 4 is impossible, and is refused before this is asked).
const fn decoded_len(chars: usize) -> usize {
    chars * 3 / 4
}

/// Checks that `content` has the shape of an envelope of either version: its prefix, then
/// base64url without padding of as many bytes as that version's envelopes have. Too long is
/// `MESSAGE_TOO_LONG`; anything else that is not an envelope is `INVALID_MESSAGE`, saying what
/// is wrong with it.
pub fn check(content: &str) -> Result<(), Refusal> {
    // Checked first and on the bytes, so that a huge message costs no more than its length.
    if content.len() > MAX_ENVELOPE_CHARS {
        return Err(too_long());
    }
    let (version, encoded) = if let Some(encoded) = content.strip_prefix(v2::PREFIX) {
        (2, encoded)
    } else if let Some(encoded) = content.strip_prefix(v1::PREFIX) {
        (1, encoded)
    } else {
        return Err(not_an_envelope(
            "it does not start with \"v2.\" (or \"v1.\")",
        ));
    };
    if !is_base64url(encoded) {
        return Err(not_an_envelope(
            "after the version comes base64url without padding (A-Z, a-z, 0-9, - and _)",
        ));
    }
    // A base64 group of four characters holds three bytes; a last group of one character would
    // hold six bits, less than a byte, so no encoding ends that way.
    if encoded.len() % 4 == 1 {
        return Err(not_an_envelope("its base64url has an impossible length"));
    }
    let bytes = decoded_len(encoded.len());
    if version == 1 {
        if content.len() > v1::MAX_CHARS {
            return Err(too_long());
        }
        if bytes < v1::MIN_SEALED_BYTES {
            return Err(not_an_envelope(
                "it is shorter than a 12-byte IV and a 16-byte tag",
            ));
        }
    } else if !v2::is_padded(bytes) {
        return Err(not_an_envelope(
            "a v2 envelope is 37 bytes and a plaintext padded to a multiple of 64 bytes",
        ));
    }
    Ok(())
}

/// Whether `text` uses only base64url's alphabet (without padding).
fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// The refusal of an envelope over the size the longest text can make.
fn too_long() -> Refusal {
    Refusal::new(
        ErrorCode::MessageTooLong,
        format!(
            "An encrypted message can be at most {MAX_ENVELOPE_CHARS} characters long \
             (4096 characters before encryption)."
        ),
    )
}

/// The refusal of something that is not an envelope, saying `why`.
fn not_an_envelope(why: &str) -> Refusal {
    Refusal::new(
        ErrorCode::InvalidMessage,
        format!(
            "Invalid message: this room is end-to-end encrypted, and that is not an encrypted message: {why}."
        ),
    )
}

/// The check value of an encrypted room's key: 16 bytes that its creator's page derives from the
/// link key with HKDF and a label of their own (docs/protocol.md), written as 22 characters of
/// base64url. The server keeps it with the room and gives it to whoever joins or resumes, so that
/// a page opened from a cut-short or altered link learns at once that its key is not the room's,
/// whether or not anyone else is online. It reveals nothing of the key; the server never checks
/// it against anything, and keeps it exactly as it came.
///
/// Stored as its 22 ASCII characters: `Copy`, no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyCheck([u8; KeyCheck::LEN]);

impl KeyCheck {
    /// Its length in characters: 16 bytes in base64url without padding.
    pub const LEN: usize = base64url_len(16);

    /// Reads a `key_check` as a client sent it: exactly 22 characters of base64url; anything
    /// else is `INVALID_MESSAGE`, saying so.
    pub fn parse(text: &str) -> Result<Self, Refusal> {
        match <[u8; KeyCheck::LEN]>::try_from(text.as_bytes()) {
            Ok(bytes) if is_base64url(text) => Ok(KeyCheck(bytes)),
            _ => Err(Refusal::new(
                ErrorCode::InvalidMessage,
                format!(
                    "Invalid message: a key_check is {} characters of base64url (16 bytes).",
                    KeyCheck::LEN
                ),
            )),
        }
    }

    /// The check as text.
    pub fn as_str(&self) -> &str {
        // Only base64url's ASCII alphabet gets in (`parse`), so this is always valid UTF-8.
        std::str::from_utf8(&self.0).expect("a key check is ASCII")
    }
}

impl std::fmt::Debug for KeyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyCheck({})", self.as_str())
    }
}

impl serde::Serialize for KeyCheck {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v1 envelope of `bytes` bytes: `v1.` and that many bytes' worth of base64url.
    fn envelope(bytes: usize) -> String {
        format!("{}{}", v1::PREFIX, "A".repeat(base64url_len(bytes)))
    }

    /// A v2 envelope whose plaintext is `blocks` blocks of 64 bytes.
    fn envelope_v2(blocks: usize) -> String {
        let bytes = v2::FIXED_BYTES + blocks * v2::PAD_BYTES;
        format!("{}{}", v2::PREFIX, "A".repeat(base64url_len(bytes)))
    }

    /// The documented limits: v1's 21,886 characters from 16,412 bytes, v2's 21,983 from
    /// 16,485 bytes (101 at least), and 21,983 in all.
    #[test]
    fn the_limits_are_the_documented_arithmetic() {
        assert_eq!(v1::MAX_SEALED_BYTES, 16_412);
        assert_eq!(base64url_len(v1::MAX_SEALED_BYTES), 21_883);
        assert_eq!(v1::MAX_CHARS, 21_886);
        assert_eq!(base64url_len(v1::MIN_SEALED_BYTES), 38);
        assert_eq!(v2::MAX_BLOCKS, 257);
        assert_eq!(v2::MIN_SEALED_BYTES, 101);
        assert_eq!(v2::MAX_SEALED_BYTES, 16_485);
        assert_eq!(v2::MAX_CHARS, 21_983);
        assert_eq!(MAX_ENVELOPE_CHARS, 21_983);
        assert_eq!(KeyCheck::LEN, 22);
    }

    /// v1 envelopes from the smallest (an empty text) to the largest (4,096 characters of four
    /// bytes each) pass, with any length base64url can have.
    #[test]
    fn v1_envelopes_of_every_possible_size_pass() {
        for bytes in [v1::MIN_SEALED_BYTES, 29, 30, 31, 100, v1::MAX_SEALED_BYTES] {
            assert_eq!(check(&envelope(bytes)), Ok(()), "{bytes} bytes");
        }
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert_eq!(check(&format!("v1.{alphabet}")), Ok(()));
    }

    /// v2 envelopes of every whole number of padding blocks pass, from one to 257.
    #[test]
    fn v2_envelopes_of_every_padded_size_pass() {
        for blocks in 1..=v2::MAX_BLOCKS {
            assert_eq!(check(&envelope_v2(blocks)), Ok(()), "{blocks} blocks");
        }
    }

    /// A v2 envelope that is not a whole number of blocks does not pass: padding is what keeps
    /// a text's length from the server, so an unpadded envelope is not one.
    #[test]
    fn an_unpadded_v2_envelope_is_invalid() {
        for bytes in [0, 36, 37, 100, 102, 164, 16_484] {
            let bad = format!("v2.{}", "A".repeat(base64url_len(bytes)));
            assert_eq!(
                check(&bad).map_err(|r| r.code),
                Err(ErrorCode::InvalidMessage),
                "{bytes} bytes"
            );
        }
    }

    /// One character over a version's limit is `MESSAGE_TOO_LONG`, whatever it holds; so is
    /// a v1 envelope the size of a long v2 one.
    #[test]
    fn an_envelope_over_the_limit_is_too_long() {
        for over in [
            format!("{}A", envelope(v1::MAX_SEALED_BYTES)),
            format!("{}AAAA", envelope_v2(v2::MAX_BLOCKS)),
            format!("v1.{}", "A".repeat(base64url_len(v2::MAX_SEALED_BYTES))),
            "é".repeat(MAX_ENVELOPE_CHARS),
        ] {
            assert_eq!(
                check(&over).map_err(|r| r.code),
                Err(ErrorCode::MessageTooLong),
                "{} characters",
                over.len()
            );
        }
    }

    /// Anything else that is not an envelope is `INVALID_MESSAGE`: plain text, another version,
    /// characters outside base64url (padding and standard base64's `+` and `/` included), an
    /// impossible length, fewer bytes than an IV and a tag.
    #[test]
    fn what_is_not_an_envelope_is_invalid() {
        let valid = envelope(40);
        for bad in [
            "hello".to_string(),
            String::new(),
            valid.replacen("v1.", "v3.", 1),
            valid.replacen("v1.", "", 1),
            format!("{valid}="),
            format!("{}+", &valid[..valid.len() - 1]),
            format!("{}/", &valid[..valid.len() - 1]),
            format!("{} ", &valid[..valid.len() - 1]),
            format!("{}é", &valid[..valid.len() - 2]),
            format!("v1.{}", "A".repeat(41)),
            envelope(v1::MIN_SEALED_BYTES - 1),
            v1::PREFIX.to_string(),
            v2::PREFIX.to_string(),
        ] {
            assert_eq!(
                check(&bad).map_err(|r| r.code),
                Err(ErrorCode::InvalidMessage),
                "{bad:?}"
            );
        }
    }

    /// A key check is exactly 22 characters of base64url, kept as it came; anything else is
    /// `INVALID_MESSAGE`.
    #[test]
    fn a_key_check_is_22_characters_of_base64url() {
        let check = KeyCheck::parse("AbCdEfGhIjKlMnOpQr-_09").expect("a key check");
        assert_eq!(check.as_str(), "AbCdEfGhIjKlMnOpQr-_09");
        for bad in [
            "",
            "AbCdEfGhIjKlMnOpQr-_0",
            "AbCdEfGhIjKlMnOpQr-_090",
            "AbCdEfGhIjKlMnOpQr+/09",
            "AbCdEfGhIjKlMnOpQr==09",
            "AbCdEfGhIjKlMnOpQr é9",
        ] {
            assert_eq!(
                KeyCheck::parse(bad).map_err(|r| r.code),
                Err(ErrorCode::InvalidMessage),
                "{bad:?}"
            );
        }
    }
}
