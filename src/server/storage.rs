//! Storage: all rooms together keep at most `--max-stored-bytes` of their conversations. Each
//! room bounds its own log (see [`crate::room::Room`]); this is the bound on their sum, and the
//! fairness of what is shed when it is reached.

use tracing::warn;

use super::ChatServer;
use crate::room::Room;

impl ChatServer {
    /// Sheds stored messages while all rooms together hold more than `--max-stored-bytes`.
    ///
    /// Fairness: the largest rooms are cut down to a common level, oldest messages first, and
    /// no room below that level loses anything, so a few rooms full of long messages cannot
    /// push out everyone else's conversation. Shedding goes a little below the budget (by an
    /// eighth), so that it runs once per many messages rather than on each. A member whose
    /// messages were shed learns it when it resumes (`lost`): never a silent gap.
    pub(super) fn keep_to_storage_budget(&mut self) {
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
        let Some(budget) = self.max_stored_bytes else {
            return;
        };
        if self.stored_bytes <= budget {
            return;
        }
        let target = budget - budget / 8;
        let mut sizes: Vec<usize> = self.rooms.values().map(Room::stored_bytes).collect();
        let level = level_for(&mut sizes, target);
        let mut shed = 0;
        for room in self.rooms.values_mut() {
            while room.stored_bytes() > level {
                let freed = room.shed_oldest();
                if freed == 0 {
                    break;
                }
                self.stored_bytes -= freed;
                shed += 1;
            }
        }
        warn!(
            shed,
            stored_bytes = self.stored_bytes,
            "over --max-stored-bytes: shed the oldest messages of the largest rooms"
        );
        self.metrics.messages_shed.increment(shed);
        self.metrics.stored_bytes.set(self.stored_bytes as f64);
    }
}

/// The highest level such that rooms of the given sizes, each cut down to at most that level,
/// hold at most `target` bytes together ("water-filling"). Sorts `sizes`.
fn level_for(sizes: &mut [usize], target: usize) -> usize {
    sizes.sort_unstable();
    // Raise the level room by room, smallest first: below the level a room keeps everything,
    // above it every room is cut to the level.
    let mut below = 0; // bytes of the rooms entirely under the level
    for (index, &size) in sizes.iter().enumerate() {
        let above = sizes.len() - index;
        if below + size * above > target {
            return (target - below) / above;
        }
        below += size;
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::level_for;

    /// The level cuts only the rooms above it, and the rooms cut to it fit in the target.
    #[test]
    fn the_level_cuts_the_largest_rooms_to_fit() {
        let mut sizes = vec![400, 10, 100, 50];
        // 10 + 50 + 100 leave 240 of 400 for the largest room alone.
        assert_eq!(level_for(&mut sizes, 400), 240);
        // 10 + 50 leave 140 for the two largest: 70 each.
        assert_eq!(level_for(&mut sizes, 200), 70);
        assert_eq!(level_for(&mut sizes, 1000), usize::MAX, "everything fits");
        assert_eq!(level_for(&mut sizes, 20), 5, "every room cut to one level");
    }
}
