//! The domain's identifiers and validated values.
//!
//! Each type checks its rules once, where it is made, so that an invalid username or room code
//! cannot exist anywhere else in the server.

use std::fmt;
use std::sync::Arc;

use rand::RngExt;
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::error::ErrorCode;

/// Identifies one connection for as long as it lives. Sent to the client in `connected`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ClientId(Uuid);

impl ClientId {
    /// A fresh random (v4) id.
    pub fn new() -> Self {
        ClientId(Uuid::new_v4())
    }
}

impl Default for ClientId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The secret that lets a new connection take over a session after a network drop (`resume`).
///
/// 128 bits from the operating system's CSPRNG, written as 32 lowercase hex digits: URL-safe,
/// and unguessable even by someone who has seen every other token.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionToken(Box<str>);

impl SessionToken {
    /// A fresh random token.
    pub fn random() -> Self {
        let bits: u128 = rand::rng().random();
        SessionToken(format!("{bits:032x}").into())
    }

    /// The token as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SessionToken {
    /// A token as a client presents it. Any text will do: one that was never issued simply
    /// matches no session.
    fn from(text: &str) -> Self {
        SessionToken(text.into())
    }
}

impl fmt::Debug for SessionToken {
    /// Never prints the secret itself, so a token cannot leak into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionToken(…)")
    }
}

impl Serialize for SessionToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// A room's code: six characters from [`RoomCode::ALPHABET`].
///
/// Stored as six ASCII bytes rather than a `String`: it is `Copy`, needs no allocation, and hashes
/// fast as the key of the room map.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomCode([u8; RoomCode::LEN]);

impl RoomCode {
    /// How many characters a code has.
    pub const LEN: usize = 6;

    /// The characters a code is made of: upper-case letters and digits without the look-alikes
    /// 0/O, 1/I/L, so a code read aloud or off a screen is typed right. 31^6 ≈ 887 million codes.
    pub const ALPHABET: &'static [u8; 31] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

    /// Draws a random code from a cryptographically secure generator, so codes cannot be predicted
    /// from earlier ones. Uniqueness among live rooms is the caller's business (the actor retries).
    pub fn random() -> Self {
        // `rand::rng()` is the thread-local ChaCha generator seeded from the OS: a CSPRNG.
        let mut rng = rand::rng();
        RoomCode(std::array::from_fn(|_| {
            RoomCode::ALPHABET[rng.random_range(0..RoomCode::ALPHABET.len())]
        }))
    }

    /// Reads a code typed by a person: surrounding whitespace is ignored and letters are
    /// upper-cased; what remains must be exactly six characters of the alphabet.
    pub fn parse(input: &str) -> Result<Self, ErrorCode> {
        let bytes = input.trim().as_bytes();
        let code: [u8; RoomCode::LEN] = bytes.try_into().map_err(|_| ErrorCode::InvalidRoomCode)?;
        let code = code.map(|byte| byte.to_ascii_uppercase());
        if code.iter().all(|byte| RoomCode::ALPHABET.contains(byte)) {
            Ok(RoomCode(code))
        } else {
            Err(ErrorCode::InvalidRoomCode)
        }
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Every byte comes from `ALPHABET`, which is ASCII, so this is always valid UTF-8.
        std::str::from_utf8(&self.0).expect("room codes are ASCII")
    }
}

impl fmt::Display for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RoomCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoomCode({})", self.as_str())
    }
}

impl Serialize for RoomCode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A person's display name: trimmed, 1 to 32 Unicode scalar values, no control characters.
///
/// Shared (`Arc<str>`) because the actor copies the sender's name into every chat message it
/// records: a clone is then a reference-count increment, not an allocation per message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(Arc<str>);

impl Username {
    /// The longest name, counted in Unicode scalar values (`char`s), not bytes.
    pub const MAX_CHARS: usize = 32;

    /// Trims `input` and checks what remains.
    pub fn parse(input: &str) -> Result<Self, ErrorCode> {
        let name = input.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > Username::MAX_CHARS || name.chars().any(char::is_control) {
            return Err(ErrorCode::InvalidUsername);
        }
        Ok(Username(name.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for Username {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random codes use only the alphabet and have the right length.
    #[test]
    fn random_codes_are_well_formed() {
        for _ in 0..1000 {
            let code = RoomCode::random();
            assert_eq!(RoomCode::parse(code.as_str()), Ok(code));
            assert!(!code.as_str().contains(['0', 'O', '1', 'I', 'L']));
        }
    }

    /// A typed code is trimmed and upper-cased before it is checked.
    #[test]
    fn parse_trims_and_uppercases() {
        let code = RoomCode::parse("  abc234\n").expect("a valid code");
        assert_eq!(code.as_str(), "ABC234");
    }

    /// Wrong lengths and look-alike characters are refused.
    #[test]
    fn parse_refuses_malformed_codes() {
        for bad in [
            "", "ABC23", "ABC2345", "ABC23O", "ABC231", "ABCDEL", "ABC 23", "ÄBC234",
        ] {
            assert_eq!(
                RoomCode::parse(bad),
                Err(ErrorCode::InvalidRoomCode),
                "{bad:?}"
            );
        }
    }

    /// Session tokens are 128 random bits in URL-safe text, and differ every time.
    #[test]
    fn session_tokens_are_long_random_and_url_safe() {
        let a = SessionToken::random();
        let b = SessionToken::random();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), 32);
        assert!(a.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(
            !format!("{a:?}").contains(a.as_str()),
            "tokens stay out of debug output"
        );
    }

    /// Names are trimmed; length is counted in characters, not bytes.
    #[test]
    fn usernames_are_trimmed_and_counted_in_chars() {
        assert_eq!(
            Username::parse("  ada  ").map(|n| n.to_string()),
            Ok("ada".into())
        );
        let thirty_two_emoji = "😀".repeat(32);
        assert!(Username::parse(&thirty_two_emoji).is_ok());
        let thirty_three = "a".repeat(33);
        assert_eq!(
            Username::parse(&thirty_three),
            Err(ErrorCode::InvalidUsername)
        );
    }

    /// Empty, blank and control-character names are refused.
    #[test]
    fn usernames_refuse_blank_and_control_characters() {
        for bad in ["", "   ", "a\u{0}b", "tab\there", "bell\u{7}", "del\u{7f}"] {
            assert_eq!(
                Username::parse(bad),
                Err(ErrorCode::InvalidUsername),
                "{bad:?}"
            );
        }
    }
}
