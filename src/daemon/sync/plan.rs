//! Room upkeep as a pure plan: which rooms to unload, which document to
//! compact. `plan()` does no I/O, so every rule is tested without a
//! daemon; `upkeep` in `mod.rs` carries the actions out.

use std::time::Duration;

use crate::protocol::sync::DocName;

/// A room as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RoomView {
    pub(crate) doc: DocName,
    pub(crate) peers: usize,
    /// How long it has had no peers.
    pub(crate) idle_for: Option<Duration>,
    /// Kept loaded whatever happens (the settings document).
    pub(crate) pinned: bool,
    /// Changes applied but not yet on disk.
    pub(crate) in_flight: bool,
    pub(crate) base_bytes: u64,
    pub(crate) appended_bytes: u64,
    pub(crate) compacting: bool,
}

/// Something upkeep should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Close an idle room; its document stays on disk.
    Unload(DocName),
    /// Rewrite a document's file as one compacted record.
    Compact(DocName),
}

/// The rules in force.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) idle_unload: Duration,
    pub(crate) compact_min_bytes: u64,
}

/// What to do now. At most one compaction runs at a time (it holds a
/// second copy of one document in memory): the document with the most
/// appended bytes among those past the threshold goes first.
pub(crate) fn plan(rooms: &[RoomView], policy: Policy) -> Vec<Action> {
    let mut actions = Vec::new();
    let compacting = rooms.iter().any(|r| r.compacting);
    for room in rooms {
        let idle = room.peers == 0 && room.idle_for.is_some_and(|d| d >= policy.idle_unload);
        if idle && !room.pinned && !room.in_flight && !room.compacting {
            actions.push(Action::Unload(room.doc.clone()));
        }
    }
    if !compacting {
        let candidate = rooms
            .iter()
            .filter(|r| r.appended_bytes > policy.compact_min_bytes.max(r.base_bytes))
            .max_by_key(|r| r.appended_bytes);
        if let Some(room) = candidate {
            actions.retain(|a| *a != Action::Unload(room.doc.clone()));
            actions.push(Action::Compact(room.doc.clone()));
        }
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> RoomView {
        RoomView {
            doc: DocName::parse(name).unwrap(),
            peers: 0,
            idle_for: None,
            pinned: false,
            in_flight: false,
            base_bytes: 1000,
            appended_bytes: 0,
            compacting: false,
        }
    }

    const POLICY: Policy = Policy { idle_unload: Duration::from_secs(60), compact_min_bytes: 4096 };

    fn unload(name: &str) -> Action {
        Action::Unload(DocName::parse(name).unwrap())
    }

    #[test]
    fn idle_rooms_unload_after_the_delay_unless_busy_or_pinned() {
        let long = Some(Duration::from_secs(61));
        let rooms = vec![
            RoomView { idle_for: long, ..room("a") },
            RoomView { idle_for: Some(Duration::from_secs(10)), ..room("b") },
            RoomView { idle_for: long, pinned: true, ..room("settings") },
            RoomView { idle_for: long, in_flight: true, ..room("c") },
            RoomView { peers: 2, idle_for: None, ..room("d") },
        ];
        assert_eq!(plan(&rooms, POLICY), vec![unload("a")]);
    }

    #[test]
    fn one_compaction_at_a_time_largest_first() {
        let rooms = vec![
            RoomView { appended_bytes: 5000, ..room("a") },
            RoomView { appended_bytes: 9000, ..room("b") },
            RoomView { appended_bytes: 3000, base_bytes: 0, ..room("small") },
            RoomView { appended_bytes: 9000, base_bytes: 20_000, ..room("big-base") },
        ];
        assert_eq!(plan(&rooms, POLICY), vec![Action::Compact(DocName::parse("b").unwrap())]);
        let busy: Vec<RoomView> =
            rooms.iter().cloned().map(|r| RoomView { compacting: r.doc.as_str() == "a", ..r }).collect();
        assert_eq!(plan(&busy, POLICY), vec![]);
    }

    #[test]
    fn a_room_being_compacted_first_is_not_unloaded() {
        let rooms = vec![RoomView { appended_bytes: 50_000, idle_for: Some(Duration::from_secs(100)), ..room("a") }];
        assert_eq!(plan(&rooms, POLICY), vec![Action::Compact(DocName::parse("a").unwrap())]);
    }
}
