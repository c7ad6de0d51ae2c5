//! The domain's identifiers and validated values.
//!
//! Each type checks its rules once, where it is made, so that an invalid username or room code
//! cannot exist anywhere else in the server. The second half of the file is the tests of those
//! rules, one per class of input that must be refused or kept.

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

    /// An id as `Display` writes it.
    pub fn parse(text: &str) -> Option<Self> {
        Uuid::parse_str(text).ok().map(ClientId)
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
/// and unguessable even by someone who has seen every other token. Kept as the number itself:
/// `Copy`, no allocation, and a fast key; as its 16 bytes rather than a `u128`, whose 16-byte
/// alignment would pad every record that holds a token (a room's seats among them).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionToken([u8; 16]);

impl SessionToken {
    /// No session: stands for a member whose session is not known (a message recovered from a
    /// room's log). A random token is never it.
    pub const NOBODY: SessionToken = SessionToken([0; 16]);

    /// A fresh random token.
    pub fn random() -> Self {
        loop {
            let bits: u128 = rand::rng().random();
            if bits != 0 {
                return SessionToken(bits.to_be_bytes());
            }
        }
    }

    /// A token as the server writes it (32 lowercase hex digits), or `None` for any other
    /// text: a token that was never issued matches no session.
    pub fn parse(text: &str) -> Option<Self> {
        let valid =
            text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        valid
            .then(|| u128::from_str_radix(text, 16).ok())
            .flatten()
            .filter(|&bits| bits != 0)
            .map(|bits| SessionToken(bits.to_be_bytes()))
    }

    /// The token as text: the secret itself, for the client and the store, never for logs.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.bits())
    }

    /// [`SessionToken::hex`]'s digits, without allocating: what a store step writes.
    pub fn hex_digits(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0; 32];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(byte >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
        }
        out
    }

    /// The token as the number it is.
    fn bits(&self) -> u128 {
        u128::from_be_bytes(self.0)
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
        serializer.collect_str(&format_args!("{:032x}", self.bits()))
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

/// A person's display name, checked so that what others see is what was chosen.
///
/// A name is trimmed of surrounding whitespace, and then must
///
/// - be 1 to [`Username::MAX_CHARS`] Unicode scalar values (`char`s) long;
/// - hold no control character (`\n`, `\t`, NUL…), which would break the line it is shown on;
/// - hold no text-direction embedding, override or isolate (U+202A–U+202E, U+2066–U+2069), with
///   which `"ada\u{202E}ecarg"` displays as `adagrace`: one person's name could show as another's;
/// - have something to see: a name made only of whitespace and invisible characters (Unicode's
///   default-ignorable code points: zero-width spaces and joiners, Hangul fillers, variation
///   selectors…) looks blank, so nobody could tell who is talking. Invisible characters next to
///   visible ones are fine: the zero-width joiner in 👩‍💻 is what makes it one emoji.
///
/// Anything else is `INVALID_USERNAME`. Letters of any script, accents and emoji are welcome.
///
/// Shared (`Arc<str>`) because the actor copies the sender's name into every chat message it
/// records: a clone is then a reference-count increment, not an allocation per message.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Username(Arc<str>);

impl Username {
    /// The longest name, counted in Unicode scalar values (`char`s), not bytes.
    pub const MAX_CHARS: usize = 32;

    /// Trims `input` and checks what remains against the rules above, in one pass.
    pub fn parse(input: &str) -> Result<Self, ErrorCode> {
        let name = input.trim();
        let mut chars = 0;
        let mut visible = false;
        for c in name.chars() {
            chars += 1;
            if c.is_control() || is_direction_control(c) {
                return Err(ErrorCode::InvalidUsername);
            }
            // `trim` only removes whitespace at the ends; whitespace inside ("ada lovelace") is
            // kept, but it is not something to see either.
            visible |= !c.is_whitespace() && !is_invisible(c);
        }
        if !visible || chars > Username::MAX_CHARS {
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

/// Whether `c` embeds, overrides or isolates a run of text's direction: LRE, RLE, PDF, LRO, RLO
/// (U+202A–U+202E) and LRI, RLI, FSI, PDI (U+2066–U+2069). They reorder the characters around
/// them for display, so a name holding one can look like a different name. The marks U+200E,
/// U+200F and U+061C only nudge neutral characters such as punctuation, so they are treated as
/// merely invisible ([`is_invisible`]).
fn is_direction_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Whether `c` is drawn as nothing at all: Unicode's `Default_Ignorable_Code_Point` property
/// (DerivedCoreProperties.txt, as of Unicode 14.0): the characters a renderer shows nothing for
/// unless it has a special reason. Among them the soft hyphen U+00AD, the combining grapheme
/// joiner U+034F, the Arabic letter mark U+061C, the Hangul fillers U+115F, U+1160, U+3164 and
/// U+FFA0, the Mongolian vowel separator U+180E, the zero-width space, non-joiner and joiner and
/// the direction marks U+200B–U+200F, the word joiner and invisible operators U+2060–U+2064, the
/// variation selectors U+FE00–U+FE0F and U+E0100–U+E01EF, the byte order mark U+FEFF, and the
/// tag characters U+E0001 and U+E0020–U+E007F. The unassigned code points in these ranges are
/// included: Unicode reserves them for more characters of the same kind.
///
/// A hand-written table rather than a crate: it is short, Unicode changes it rarely, and it is
/// only read when someone sets a name.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFF8}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
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
        assert_eq!(a.hex().len(), 32);
        assert!(a.hex().chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
        assert!(
            !format!("{a:?}").contains(&a.hex()),
            "tokens stay out of debug output"
        );
        assert_eq!(SessionToken::parse(&a.hex()), Some(a), "a token reads back");
        assert_eq!(
            a.hex_digits(),
            a.hex().as_bytes(),
            "the store gets the same digits"
        );
    }

    /// Only a token as the server writes it can name a session: anything else names none.
    #[test]
    fn only_issued_tokens_parse() {
        let a = SessionToken::random().hex();
        for text in [
            "",
            &a[1..],
            &format!("{a}0"),
            &a.to_uppercase(),
            &format!("+{}", &a[1..]),
            "00000000000000000000000000000000",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ] {
            assert_eq!(SessionToken::parse(text), None, "{text:?}");
        }
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

    /// The invisible characters issue #10 names: zero-width space, non-joiner and joiner, word
    /// joiner and invisible operators, byte order mark, soft hyphen, Mongolian vowel separator,
    /// combining grapheme joiner, Hangul fillers, direction marks and variation selectors.
    const NAMED_INVISIBLES: &[char] = &[
        '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{2061}', '\u{2062}', '\u{2063}',
        '\u{2064}', '\u{FEFF}', '\u{00AD}', '\u{180E}', '\u{034F}', '\u{115F}', '\u{1160}',
        '\u{3164}', '\u{FFA0}', '\u{200E}', '\u{200F}', '\u{061C}', '\u{FE00}', '\u{FE01}',
        '\u{FE02}', '\u{FE03}', '\u{FE04}', '\u{FE05}', '\u{FE06}', '\u{FE07}', '\u{FE08}',
        '\u{FE09}', '\u{FE0A}', '\u{FE0B}', '\u{FE0C}', '\u{FE0D}', '\u{FE0E}', '\u{FE0F}',
    ];

    /// The text-direction embeddings, overrides and isolates: LRE, RLE, PDF, LRO, RLO, LRI, RLI,
    /// FSI, PDI.
    const DIRECTION_CONTROLS: &[char] = &[
        '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2066}', '\u{2067}',
        '\u{2068}', '\u{2069}',
    ];

    fn assert_refused(name: &str) {
        assert_eq!(
            Username::parse(name),
            Err(ErrorCode::InvalidUsername),
            "{name:?} must be refused"
        );
    }

    fn assert_accepted(name: &str) {
        assert_eq!(
            Username::parse(name).map(|n| n.to_string()),
            Ok(name.to_string()),
            "{name:?} must be accepted unchanged"
        );
    }

    /// A name of nothing but invisible characters, alone, repeated or mixed with spaces, looks
    /// blank and is refused: every character issue #10 lists.
    #[test]
    fn usernames_of_only_invisible_characters_are_refused() {
        for &c in NAMED_INVISIBLES {
            assert_refused(&c.to_string());
            assert_refused(&format!("{c}{c}"));
            assert_refused(&format!(" {c} {c} "));
            assert_refused(&format!("{c}\u{3000}{c}"));
        }
        // All of them together, up to the length limit, so that only blankness can refuse it.
        let mixed: String = NAMED_INVISIBLES.iter().take(Username::MAX_CHARS).collect();
        assert_refused(&mixed);
    }

    /// The rest of Unicode's default-ignorable code points are as invisible as the listed ones
    /// (Khmer inherent vowels, Mongolian free variation selectors, deprecated format characters,
    /// shorthand format controls, musical beam controls, tags, the supplementary variation
    /// selectors) and are refused alone too.
    #[test]
    fn usernames_of_other_default_ignorables_are_refused() {
        for c in [
            '\u{17B4}',
            '\u{17B5}',
            '\u{180B}',
            '\u{180F}',
            '\u{2065}',
            '\u{206A}',
            '\u{206F}',
            '\u{FFF0}',
            '\u{FFF8}',
            '\u{1BCA0}',
            '\u{1D173}',
            '\u{1D17A}',
            '\u{E0001}',
            '\u{E0020}',
            '\u{E007F}',
            '\u{E0100}',
            '\u{E01EF}',
            '\u{E0FFF}',
        ] {
            assert_refused(&c.to_string());
            assert_refused(&format!("{c} {c}"));
        }
    }

    /// Whitespace of any kind is not something to see: names of no-break, ideographic or em
    /// spaces, alone or with invisible characters, are refused like names of ASCII spaces.
    #[test]
    fn usernames_of_only_unicode_whitespace_are_refused() {
        for bad in [
            "\u{00A0}",
            "\u{3000}\u{3000}",
            "\u{2003}",
            "\u{2028}",
            " \u{200B} ",
            "\u{00A0}\u{FEFF}\u{00A0}",
        ] {
            assert_refused(bad);
        }
    }

    /// Invisible characters beside visible ones are kept as they are: they join emoji, select
    /// emoji presentation, or mark direction, and the name still shows.
    #[test]
    fn invisible_characters_inside_a_visible_name_are_kept() {
        for &c in NAMED_INVISIBLES {
            assert_accepted(&format!("ada{c}"));
            assert_accepted(&format!("{c}grace"));
        }
        for good in [
            "👩\u{200D}💻",
            "👨\u{200D}👩\u{200D}👧",
            "❤\u{FE0F}",
            "🏴\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        ] {
            assert_accepted(good);
        }
    }

    /// Invisible characters count towards the 32-character limit like any other.
    #[test]
    fn invisible_characters_count_towards_the_length() {
        assert_accepted(&format!("a{}", "\u{200B}".repeat(31)));
        assert_refused(&format!("a{}", "\u{200B}".repeat(32)));
    }

    /// A text-direction embedding, override or isolate is refused wherever it is in a name,
    /// since it can make one name display as another (`ada\u{202E}ecarg` shows as `adagrace`).
    #[test]
    fn usernames_with_direction_controls_are_refused() {
        for &c in DIRECTION_CONTROLS {
            assert_refused(&c.to_string());
            assert_refused(&format!("ada{c}grace"));
            assert_refused(&format!("{c}ada"));
            assert_refused(&format!("ada{c}"));
            assert_refused(&format!("{c}ada\u{202C}"));
        }
    }

    /// Names in any script, with accents, inner spaces or emoji, are accepted unchanged.
    #[test]
    fn names_in_any_script_are_accepted() {
        for good in [
            "Zoë",
            "李小龙",
            "ada lovelace",
            "Ada Lovelace",
            "👩\u{200D}💻",
            "José",
            "O'Brien",
            "سارة",
            "Ελένη",
            "Đặng Thị",
            "한글",
        ] {
            assert_accepted(good);
        }
    }
}
