//! What the server knows of an end-to-end encrypted message: its shape, never its meaning.
//!
//! In a room created with `"encrypted": true`, a `chat`'s `content` is an *envelope* that the
//! browsers seal and open with a key the server never sees (it travels in the invite link's
//! fragment; docs/security.md says why). The server relays and stores the envelope exactly as
//! it came. All it can check is that the envelope has the documented shape and size, so that a
//! broken client is told at once and a room cannot be made to keep more than a message's worth
//! of bytes per message:
//!
//! ```text
//! v1.<base64url, no padding, of: 12-byte IV ‖ AES-256-GCM ciphertext ‖ 16-byte tag>
//! ```
//!
//! Whether the ciphertext is genuine, and whether the plaintext is empty or over 4,096
//! characters, only the pages that hold the key can tell; they check it themselves.

use crate::error::{ErrorCode, Refusal};
use crate::server::MAX_CHAT_CHARS;

/// What every envelope starts with: the version of the scheme.
pub const PREFIX: &str = "v1.";

/// The bytes of AES-GCM's random nonce (its IV) at the start of the decoded envelope.
pub const IV_BYTES: usize = 12;

/// The bytes of AES-GCM's authentication tag, at the end of the ciphertext.
pub const TAG_BYTES: usize = 16;

/// The fewest bytes an envelope decodes to: the IV and the tag around an empty plaintext.
pub const MIN_SEALED_BYTES: usize = IV_BYTES + TAG_BYTES;

/// The most bytes an envelope decodes to: the IV and the tag around the longest plaintext, 4,096
/// characters of at most 4 bytes each in UTF-8 (AES-GCM's ciphertext is as long as its
/// plaintext): 12 + 16,384 + 16 = 16,412 bytes.
pub const MAX_SEALED_BYTES: usize = IV_BYTES + 4 * MAX_CHAT_CHARS + TAG_BYTES;

/// The longest envelope, in characters: [`PREFIX`] and [`MAX_SEALED_BYTES`] in base64url
/// without padding. 16,412 bytes are 5,470 groups of three bytes (4 characters each) and 2
/// bytes left over (3 characters): 21,883 characters, and 3 for `v1.`: 21,886.
pub const MAX_ENVELOPE_CHARS: usize = PREFIX.len() + base64url_len(MAX_SEALED_BYTES);

/// How many characters base64url without padding writes for `bytes` bytes.
const fn base64url_len(bytes: usize) -> usize {
    bytes / 3 * 4
        + match bytes % 3 {
            0 => 0,
            1 => 2,
            _ => 3,
        }
}

/// Checks that `content` has the shape of an envelope: `v1.`, then base64url without padding
/// of [`MIN_SEALED_BYTES`] to [`MAX_SEALED_BYTES`] bytes. Too long is `MESSAGE_TOO_LONG`;
/// anything else that is not an envelope is `INVALID_MESSAGE`, saying what is wrong with it.
pub fn check(content: &str) -> Result<(), Refusal> {
    // Checked first and on the bytes, so that a huge message costs no more than its length.
    if content.len() > MAX_ENVELOPE_CHARS {
        return Err(Refusal::new(
            ErrorCode::MessageTooLong,
            format!(
                "An encrypted message can be at most {MAX_ENVELOPE_CHARS} characters long \
                 (4096 characters before encryption)."
            ),
        ));
    }
    let Some(encoded) = content.strip_prefix(PREFIX) else {
        return Err(not_an_envelope("it does not start with \"v1.\""));
    };
    if !encoded
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    {
        return Err(not_an_envelope(
            "after \"v1.\" comes base64url without padding (A-Z, a-z, 0-9, - and _)",
        ));
    }
    // A base64 group of four characters holds three bytes; a last group of one character would
    // hold six bits, less than a byte, so no encoding ends that way.
    if encoded.len() % 4 == 1 {
        return Err(not_an_envelope("its base64url has an impossible length"));
    }
    if encoded.len() * 3 / 4 < MIN_SEALED_BYTES {
        return Err(not_an_envelope(
            "it is shorter than a 12-byte IV and a 16-byte tag",
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An envelope of `bytes` bytes: `v1.` and that many bytes' worth of base64url.
    fn envelope(bytes: usize) -> String {
        format!("{PREFIX}{}", "A".repeat(base64url_len(bytes)))
    }

    /// The documented limit: 21,886 characters, from 16,412 bytes.
    #[test]
    fn the_limit_is_the_documented_arithmetic() {
        assert_eq!(MAX_SEALED_BYTES, 16_412);
        assert_eq!(base64url_len(MAX_SEALED_BYTES), 21_883);
        assert_eq!(MAX_ENVELOPE_CHARS, 21_886);
        assert_eq!(base64url_len(MIN_SEALED_BYTES), 38);
    }

    /// Envelopes from the smallest (an empty plaintext) to the largest (4,096 characters of
    /// four bytes each) pass, with any length base64url can have.
    #[test]
    fn envelopes_of_every_possible_size_pass() {
        for bytes in [MIN_SEALED_BYTES, 29, 30, 31, 100, MAX_SEALED_BYTES] {
            assert_eq!(check(&envelope(bytes)), Ok(()), "{bytes} bytes");
        }
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        assert_eq!(check(&format!("{PREFIX}{alphabet}")), Ok(()));
    }

    /// One character over the limit is `MESSAGE_TOO_LONG`, whatever it holds.
    #[test]
    fn an_envelope_over_the_limit_is_too_long() {
        let over = format!("{}A", envelope(MAX_SEALED_BYTES));
        assert_eq!(over.len(), MAX_ENVELOPE_CHARS + 1);
        assert_eq!(
            check(&over).map_err(|r| r.code),
            Err(ErrorCode::MessageTooLong)
        );
        let long_garbage = "é".repeat(MAX_ENVELOPE_CHARS);
        assert_eq!(
            check(&long_garbage).map_err(|r| r.code),
            Err(ErrorCode::MessageTooLong)
        );
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
            valid.replacen("v1.", "v2.", 1),
            valid.replacen("v1.", "", 1),
            format!("{valid}="),
            format!("{}+", &valid[..valid.len() - 1]),
            format!("{}/", &valid[..valid.len() - 1]),
            format!("{} ", &valid[..valid.len() - 1]),
            format!("{}é", &valid[..valid.len() - 2]),
            format!("{PREFIX}{}", "A".repeat(41)),
            envelope(MIN_SEALED_BYTES - 1),
            PREFIX.to_string(),
        ] {
            assert_eq!(
                check(&bad).map_err(|r| r.code),
                Err(ErrorCode::InvalidMessage),
                "{bad:?}"
            );
        }
    }
}
