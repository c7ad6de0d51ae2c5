//! What each room script is given of `lua/prelude.lua`: the definitions it uses, no more.
//!
//! The prelude defines what the scripts of a room share (reading the seats, publishing an
//! event, trimming the log). Redis runs a whole script on every call, its definitions too, and
//! making a Lua function is work: with the whole prelude before it, a script that does nothing
//! costs Redis twice what it costs without (`bench/lua-cost.py`: 3.1 µs a call against 1.6).
//! So each script gets the definitions it names, and those that they name in turn, in the
//! prelude's order; a chat gets five of them.
//!
//! A definition is a top-level `local function NAME` or `local NAME =`, with the comment lines
//! just above it, and runs to the next one. A Lua local is seen only below its definition, so a
//! definition can only use the ones before it: one pass from the last to the first finds all
//! that a script needs.

use std::collections::HashSet;

/// One top-level definition of the prelude.
struct Definition<'a> {
    name: &'a str,
    text: &'a str,
}

/// `body`, after `header` and the definitions of `prelude` that it uses, directly or not.
pub fn for_script(header: &str, prelude: &str, body: &str) -> String {
    let definitions = definitions(prelude);
    let mut needed = names_in(body);
    let mut used = vec![false; definitions.len()];
    for (at, definition) in definitions.iter().enumerate().rev() {
        if needed.contains(definition.name) {
            used[at] = true;
            needed.extend(names_in(definition.text));
        }
    }
    let mut script = String::from(header);
    for (definition, _) in definitions.iter().zip(&used).filter(|(_, used)| **used) {
        script.push_str(definition.text);
    }
    script.push_str(body);
    script
}

/// The prelude's top-level definitions, in order. What comes before the first (the file's own
/// comment) belongs to none.
fn definitions(prelude: &str) -> Vec<Definition<'_>> {
    let lines: Vec<&str> = prelude.split_inclusive('\n').collect();
    let mut starts = Vec::new(); // (the line where a definition's text starts, its name)
    for (at, line) in lines.iter().enumerate() {
        if let Some(name) = defined_name(line) {
            let mut first = at;
            while first > 0 && lines[first - 1].starts_with("--") {
                first -= 1;
            }
            starts.push((first, name));
        }
    }
    let offset = |line: usize| lines[..line].iter().map(|line| line.len()).sum::<usize>();
    starts
        .iter()
        .enumerate()
        .map(|(n, &(first, name))| {
            let end = starts
                .get(n + 1)
                .map_or(prelude.len(), |&(next, _)| offset(next));
            Definition {
                name,
                text: &prelude[offset(first)..end],
            }
        })
        .collect()
}

/// The name a top-level line defines: `local function NAME(` or `local NAME =`.
fn defined_name(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("local ")?;
    let rest = rest.strip_prefix("function ").unwrap_or(rest);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let name = &rest[..end];
    let after = rest[end..].trim_start();
    (!name.is_empty() && (after.starts_with('(') || after.starts_with('='))).then_some(name)
}

/// Every word of `text` that could be a Lua name, but those of lines that are comments (a
/// comment may name a definition it does not use). Strings and comments after code count: a
/// name found there only brings in a definition that is not needed, which costs a little, never
/// leaves out one that is.
fn names_in(text: &str) -> HashSet<&str> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .flat_map(|line| line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|word| !word.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRELUDE: &str = include_str!("lua/prelude.lua");

    fn defines(script: &str, name: &str) -> bool {
        script.contains(&format!("local function {name}("))
            || script.contains(&format!("local {name} ="))
    }

    #[test]
    fn every_definition_of_the_prelude_is_found_with_its_whole_text() {
        let found = definitions(PRELUDE);
        let expected = PRELUDE
            .lines()
            .filter(|line| defined_name(line).is_some())
            .count();
        assert_eq!(found.len(), expected);
        assert!(found.len() > 10, "{} definitions", found.len());
        // Together, from the first one's comment on, they are the prelude to its end.
        let joined: String = found.iter().map(|definition| definition.text).collect();
        assert!(PRELUDE.ends_with(&joined));
        let check_live = found
            .iter()
            .find(|definition| definition.name == "check_live")
            .expect("check_live");
        assert!(check_live.text.starts_with("-- `check`, and `GONE` too"));
        assert!(check_live.text.trim_end().ends_with("end"));
    }

    #[test]
    fn a_chat_gets_what_it_uses_and_nothing_else() {
        let script = for_script(
            "local PUBLISH = 'PUBLISH'\n",
            PRELUDE,
            include_str!("lua/room_chat.lua"),
        );
        for used in ["channel_of", "f", "check_live", "entries", "raise_chat"] {
            assert!(defines(&script, used), "{used}");
        }
        // `check` and `seats` are named in check_live's comment only.
        for unused in [
            "remove_member",
            "SEAT_FIELDS",
            "event",
            "vouch",
            "check",
            "seats",
        ] {
            assert!(!defines(&script, unused), "{unused}");
        }
        assert!(script.starts_with("local PUBLISH = 'PUBLISH'\n"));
    }

    #[test]
    fn what_a_used_definition_uses_comes_too() {
        // room_leave.lua calls remove_member, which calls seats, f and event and names
        // SEAT_FIELDS; they come before it, in the prelude's order.
        let script = for_script("", PRELUDE, include_str!("lua/room_leave.lua"));
        let at = |name: &str| {
            script
                .find(&format!("local function {name}("))
                .or_else(|| script.find(&format!("local {name} =")))
                .unwrap_or_else(|| panic!("{name} is missing"))
        };
        assert!(at("f") < at("seats"));
        assert!(at("seats") < at("event"));
        assert!(at("event") < at("SEAT_FIELDS"));
        assert!(at("SEAT_FIELDS") < at("remove_member"));
    }
}
