//! The chat room as pure logic: who is in it under which name, and who must hear what.
//!
//! The room knows nothing of sockets: each event (`JOIN`, `MSG`, a member leaving) returns the
//! deliveries it causes, and the network layer queues them. A sender is never among the
//! recipients of its own message.

use std::collections::{BTreeMap, HashMap};

use crate::core::wire::{BadLine, EndReason, ErrCode, ServerMsg};

/// Longest chat name, in characters.
pub const MAX_NAME: usize = 32;

/// Identifies a connection (the server's connection number).
pub type MemberId = u64;

/// Hashes connection numbers for maps on the relay's hot path: one multiply instead of
/// SipHash (numbers are handed out by the server, not chosen by clients, so flooding a map
/// with collisions is not possible).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by connection number, hashed with [`IdHasher`].
pub type IdMap<V> = HashMap<MemberId, V, std::hash::BuildHasherDefault<IdHasher>>;

/// One message to queue for a set of members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Who gets it.
    pub to: Vec<MemberId>,
    /// What they get.
    pub msg: ServerMsg,
}

/// Members and their names.
#[derive(Debug, Default, Clone)]
pub struct Room {
    by_id: IdMap<String>,
    by_name: BTreeMap<String, MemberId>,
    /// Members in name order, kept up to date so a delivery allocates nothing.
    order: Vec<MemberId>,
    /// Changes whenever `order` does (see [`Room::version`]).
    version: u64,
}

/// Checks a chat name: 1 to [`MAX_NAME`] characters, no spaces or control characters.
pub fn validate_name(name: &str) -> Result<(), BadLine> {
    let chars = name.chars().count();
    let bad = |why: &str| BadLine {
        code: ErrCode::MissingArgument,
        detail: format!("JOIN needs a name: {why}"),
    };
    if chars == 0 {
        return Err(bad("it is empty"));
    }
    if chars > MAX_NAME {
        return Err(bad(&format!("at most {MAX_NAME} characters")));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("no spaces or control characters"));
    }
    Ok(())
}

impl Room {
    /// An empty room.
    pub fn new() -> Self {
        Self::default()
    }

    /// Members in the room.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when nobody has joined.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The name of `id`, if it joined.
    pub fn name_of(&self, id: MemberId) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    /// The member holding `name`, if any.
    pub fn id_of(&self, name: &str) -> Option<MemberId> {
        self.by_name.get(name).copied()
    }

    /// Everyone but `id`, in name order (so deliveries are deterministic).
    fn others(&self, id: MemberId) -> Vec<MemberId> {
        self.by_name
            .values()
            .copied()
            .filter(|&m| m != id)
            .collect()
    }

    /// Whether `JOIN name` from `id` would succeed, without joining: the refusal
    /// [`Room::handle_join`] would give.
    pub fn check_join(&self, id: MemberId, name: &str) -> Result<(), BadLine> {
        validate_name(name)?;
        if let Some(current) = self.by_id.get(&id) {
            return Err(BadLine {
                code: ErrCode::AlreadyJoined,
                detail: format!("already joined as {current}"),
            });
        }
        if self.by_name.contains_key(name) {
            return Err(BadLine {
                code: ErrCode::NameTaken,
                detail: format!("{name} is taken"),
            });
        }
        Ok(())
    }

    /// `JOIN name` from `id`: on success, `JOINED name` for everyone else.
    pub fn handle_join(&mut self, id: MemberId, name: &str) -> Result<Delivery, BadLine> {
        self.check_join(id, name)?;
        self.by_id.insert(id, name.to_owned());
        self.by_name.insert(name.to_owned(), id);
        self.order = self.by_name.values().copied().collect();
        self.version += 1;
        Ok(Delivery {
            to: self.others(id),
            msg: ServerMsg::Joined(name.to_owned()),
        })
    }

    /// `MSG text` from `id`: `MSG name text` for everyone else.
    pub fn handle_msg(&self, id: MemberId, text: &str) -> Result<Delivery, BadLine> {
        let name = self.by_id.get(&id).ok_or_else(|| BadLine {
            code: ErrCode::NotJoined,
            detail: "JOIN NAME first".to_owned(),
        })?;
        Ok(Delivery {
            to: self.others(id),
            msg: ServerMsg::Msg {
                from: name.clone(),
                text: text.to_owned(),
            },
        })
    }

    /// `id` is gone for `reason`: `LEFT name reason` for everyone else, if it had joined.
    pub fn handle_leave(&mut self, id: MemberId, reason: EndReason) -> Option<Delivery> {
        let name = self.by_id.remove(&id)?;
        self.by_name.remove(&name);
        self.order.retain(|&m| m != id);
        self.version += 1;
        Some(Delivery {
            to: self.others(id),
            msg: ServerMsg::Left { name, reason },
        })
    }

    /// Connection `new` takes over the name `old` holds, keeping its place in the room: no
    /// delivery (a resume is not a change of membership), and `old` is no member any more, so
    /// its leaving later produces no `LEFT`. False (nothing changes) when `old` is not a
    /// member or `new` already is one.
    pub fn take_over(&mut self, old: MemberId, new: MemberId) -> bool {
        if old == new || self.by_id.contains_key(&new) {
            return false;
        }
        let Some(name) = self.by_id.remove(&old) else {
            return false;
        };
        self.by_name.insert(name.clone(), new);
        self.by_id.insert(new, name);
        for m in &mut self.order {
            if *m == old {
                *m = new;
            }
        }
        self.version += 1;
        true
    }

    /// Every member's name, in name order (the `MEMBERS` answer to `WHO`).
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every member, in name order.
    pub fn members(&self) -> &[MemberId] {
        &self.order
    }

    /// A number that changes whenever the member list does, so a caller may keep facts
    /// about the list from one delivery to the next.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Forgets every member at once (the room closes): no `LEFT` is produced.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.by_name.clear();
        self.order.clear();
        self.version += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_announces_to_the_others_only() {
        let mut r = Room::new();
        assert_eq!(r.handle_join(1, "ann").unwrap().to, Vec::<u64>::new());
        let d = r.handle_join(2, "bob").unwrap();
        assert_eq!(
            d,
            Delivery {
                to: vec![1],
                msg: ServerMsg::Joined("bob".into())
            }
        );
        let d = r.handle_join(3, "cy").unwrap();
        assert_eq!(d.to, vec![1, 2]);
        assert_eq!(r.len(), 3);
    }

    #[test]
    fn names_are_unique_and_validated() {
        let mut r = Room::new();
        r.handle_join(1, "ann").unwrap();
        assert_eq!(
            r.handle_join(2, "ann").unwrap_err().code,
            ErrCode::NameTaken
        );
        assert_eq!(
            r.handle_join(1, "other").unwrap_err().code,
            ErrCode::AlreadyJoined
        );
        r.handle_join(3, "bob").unwrap();
        assert_eq!(r.names(), vec!["ann".to_owned(), "bob".to_owned()]);
        for bad in ["", "a b", "tab\there", "bell\u{7}", &"x".repeat(33)] {
            assert_eq!(
                r.handle_join(2, bad).unwrap_err().code,
                ErrCode::MissingArgument,
                "{bad:?}"
            );
        }
        assert!(
            r.handle_join(2, &"é".repeat(32)).is_ok(),
            "32 characters, 64 bytes"
        );
    }

    #[test]
    fn messages_go_to_everyone_but_the_sender() {
        let mut r = Room::new();
        assert_eq!(r.handle_msg(1, "hi").unwrap_err().code, ErrCode::NotJoined);
        r.handle_join(1, "ann").unwrap();
        r.handle_join(2, "bob").unwrap();
        r.handle_join(3, "cy").unwrap();
        let d = r.handle_msg(2, "hello all").unwrap();
        assert_eq!(d.to, vec![1, 3]);
        assert_eq!(
            d.msg,
            ServerMsg::Msg {
                from: "bob".into(),
                text: "hello all".into()
            }
        );
    }

    #[test]
    fn leaving_announces_once_and_frees_the_name() {
        let mut r = Room::new();
        r.handle_join(1, "ann").unwrap();
        r.handle_join(2, "bob").unwrap();
        let d = r.handle_leave(1, EndReason::HeartbeatTimeout).unwrap();
        assert_eq!(
            d,
            Delivery {
                to: vec![2],
                msg: ServerMsg::Left {
                    name: "ann".into(),
                    reason: EndReason::HeartbeatTimeout
                }
            }
        );
        assert_eq!(r.handle_leave(1, EndReason::Closed), None);
        assert_eq!(
            r.handle_leave(9, EndReason::Closed),
            None,
            "never joined: nothing to announce"
        );
        assert!(r.handle_join(3, "ann").is_ok());
    }

    #[test]
    fn a_takeover_moves_the_name_silently_and_the_old_id_leaves_without_left() {
        let mut r = Room::new();
        r.handle_join(1, "ann").unwrap();
        r.handle_join(2, "bob").unwrap();
        r.handle_join(3, "cy").unwrap();
        assert!(!r.take_over(2, 1), "1 is a member already");
        assert!(!r.take_over(9, 10), "9 is no member");
        assert!(r.take_over(2, 7));
        assert_eq!(r.id_of("bob"), Some(7));
        assert_eq!(r.name_of(7), Some("bob"));
        assert_eq!(r.name_of(2), None);
        assert_eq!(r.members(), &[1, 7, 3], "same place in name order");
        assert_eq!(r.len(), 3);
        assert_eq!(
            r.handle_leave(2, EndReason::Replaced),
            None,
            "no LEFT for the old one"
        );
        assert_eq!(r.handle_msg(7, "hi").unwrap().to, vec![1, 3]);
    }
}
