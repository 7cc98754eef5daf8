//! The room's stream: every room message's offset, and the newest messages kept for replay.
//!
//! Each room message gets the next offset of the stream (1 for the first); [`History::last`]
//! is the newest one's (0 before any). The newest messages are kept in a ring bounded twice:
//! at most `max_count` messages (0 keeps none: history off) and at most `max_bytes` bytes,
//! counting each message's name and text plus one separator byte (what a replay line carries
//! besides its position); the oldest go first when either bound is passed. The memory on top
//! of that is one 8-byte slot per kept message and the log's slack: dropped messages at its
//! front until it is compacted, so at most about twice `max_bytes` in all
//! ([`History::heap_bytes`] counts the whole).
//!
//! The kept messages are always a gapless run ending at the newest message, so a replay from
//! any position inside it misses nothing. That is why a single message larger than
//! `max_bytes` is not kept *and the older ones are dropped with it*: keeping them would leave
//! a hole, and a client resuming from before the big message must be told its gap cannot be
//! filled rather than be given the messages around it.

use std::collections::VecDeque;

/// A log shorter than this is compacted only when it would otherwise grow (moving a few
/// bytes often is not worth it).
const COMPACT_AFTER: usize = 8 * 1024;

/// A kept message, as a replay reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept<'a> {
    /// Its offset in the stream.
    pub offset: u64,
    /// Its sender.
    pub from: &'a str,
    /// Its text.
    pub text: &'a str,
}

/// Messages after an offset cannot be replayed: some are no longer kept, or the offset is
/// beyond the newest message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooOld;

/// The stream's offsets and its bounded history. See the module docs.
///
/// The kept messages are stored back to back in one byte log (`NAME TEXT`, a name has no
/// spaces), so recording a message allocates nothing once the log has grown: a relay at a
/// million messages a second must not pay a heap allocation and a free for each.
#[derive(Debug, Clone)]
pub struct History {
    max_count: usize,
    max_bytes: usize,
    /// The kept messages' bytes, from `head` on.
    log: Vec<u8>,
    /// Bytes at the front of `log` that belong to dropped messages.
    head: usize,
    /// Where each kept message ends in `log`, oldest first (it starts where the previous one
    /// ends, or at `head`).
    ends: VecDeque<usize>,
    /// Offset of the newest message, kept or not (0: none yet).
    last: u64,
    /// Bytes moved by compactions so far (the amortisation test reads it).
    moved: u64,
}

impl History {
    /// An empty stream keeping at most `max_count` messages and `max_bytes` bytes of them.
    pub fn new(max_count: usize, max_bytes: usize) -> Self {
        Self {
            max_count,
            max_bytes,
            log: Vec::new(),
            head: 0,
            ends: VecDeque::new(),
            last: 0,
            moved: 0,
        }
    }

    /// Offset of the newest room message (0 while there is none).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The offset the next room message will get.
    pub fn next_offset(&self) -> u64 {
        self.last + 1
    }

    /// Offset of the oldest kept message, if any is kept.
    pub fn oldest(&self) -> Option<u64> {
        (!self.ends.is_empty()).then(|| self.last + 1 - self.ends.len() as u64)
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when no message is kept.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes counted against `max_bytes` (each kept message's name, text and one separator).
    pub fn bytes(&self) -> usize {
        self.log.len() - self.head
    }

    /// About the heap memory the kept messages take: the log and one slot per message.
    pub fn heap_bytes(&self) -> usize {
        self.log.capacity() + self.ends.capacity() * std::mem::size_of::<usize>()
    }

    /// A room message from `from` with `text` was delivered: it takes the next offset
    /// (returned) and is kept if the bounds allow.
    pub fn record(&mut self, from: &str, text: &str) -> u64 {
        self.last += 1;
        let len = from.len() + 1 + text.len();
        if self.max_count == 0 || len > self.max_bytes {
            // Not kept, so nothing older can be replayed past it either (module docs).
            self.clear();
            return self.last;
        }
        while self.ends.len() >= self.max_count || self.bytes() + len > self.max_bytes {
            let Some(end) = self.ends.pop_front() else {
                break;
            };
            self.head = end;
        }
        if self.ends.is_empty() {
            self.log.clear();
            self.head = 0;
        } else {
            let must_grow = self.log.len() + len > self.log.capacity();
            let half_dropped = self.head > 0 && self.head * 2 >= self.log.len();
            if half_dropped && (must_grow || self.head * 2 >= COMPACT_AFTER) {
                // Dropped messages make up half the log: move the kept ones to the front.
                // Only then, so a compaction moves no more bytes than the messages dropped
                // since the last one brought (each byte moves about once). Compacting
                // whenever the log would have to grow instead moved the whole history every
                // few hundred messages once the log's capacity sat just above it: a quarter
                // of a relay's CPU at the default 1,000 messages (bench/ANALYSIS.md, "sixth
                // round"). A short log is compacted only when it would otherwise grow.
                self.compact();
            } else if must_grow {
                // Room for twice what is kept, so dropped messages can pile up to half the
                // log before it is compacted; never more than twice the byte bound.
                let want = (2 * (self.bytes() + len)).min(2 * self.max_bytes);
                let want = want.max(self.log.len() + len);
                self.log.reserve_exact(want - self.log.len());
            }
        }
        self.log.extend_from_slice(from.as_bytes());
        self.log.push(b' ');
        self.log.extend_from_slice(text.as_bytes());
        self.ends.push_back(self.log.len());
        self.last
    }

    /// The kept message at index `i` (0: the oldest).
    fn kept(&self, i: usize) -> Kept<'_> {
        let start = if i == 0 { self.head } else { self.ends[i - 1] };
        // Stored from `&str`s, so always UTF-8; a replay pays the check, a record does not.
        let line = std::str::from_utf8(&self.log[start..self.ends[i]]).unwrap_or_default();
        let (from, text) = line.split_once(' ').unwrap_or((line, ""));
        Kept {
            offset: self.last + 1 - (self.ends.len() - i) as u64,
            from,
            text,
        }
    }

    /// Every message after `offset`, oldest first: empty when `offset` is the newest;
    /// [`TooOld`] when one of them is no longer kept or `offset` is beyond the newest.
    pub fn after(&self, offset: u64) -> Result<impl Iterator<Item = Kept<'_>>, TooOld> {
        if offset > self.last {
            return Err(TooOld);
        }
        let skip = if offset == self.last {
            self.ends.len()
        } else {
            // The kept run ends at `last`, so it covers offset+1.. iff it starts there or
            // earlier.
            match self.oldest() {
                Some(oldest) if oldest <= offset + 1 => (offset + 1 - oldest) as usize,
                _ => return Err(TooOld),
            }
        };
        Ok((skip..self.ends.len()).map(|i| self.kept(i)))
    }

    /// The newest `n` kept messages (fewer if fewer are kept), oldest first.
    pub fn newest(&self, n: usize) -> impl Iterator<Item = Kept<'_>> {
        let skip = self.ends.len().saturating_sub(n);
        (skip..self.ends.len()).map(|i| self.kept(i))
    }

    /// Records a room message that has offset `offset` in a stream kept elsewhere (the
    /// cluster's Redis stream: this history is then its mirror). The next offset is the
    /// usual case; after a hole (messages nobody could read) the kept run starts over there,
    /// so a replay never skips a message silently. An offset not after the newest one changes
    /// nothing.
    pub fn record_at(&mut self, offset: u64, from: &str, text: &str) {
        if offset <= self.last {
            return;
        }
        if offset != self.last + 1 {
            self.clear();
            self.last = offset - 1;
        }
        self.record(from, text);
    }

    /// Forgets everything and makes `last` the newest offset (a new stream, or a mirror
    /// that starts where its stream stands).
    pub fn restart(&mut self, last: u64) {
        self.clear();
        self.last = last;
    }

    /// Moves the kept messages to the front of the log.
    fn compact(&mut self) {
        self.moved += (self.log.len() - self.head) as u64;
        self.log.drain(..self.head);
        for end in &mut self.ends {
            *end -= self.head;
        }
        self.head = 0;
    }

    /// Forgets the kept messages (offsets go on).
    pub fn clear(&mut self) {
        self.log = Vec::new();
        self.head = 0;
        self.ends = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mirror_records_at_given_offsets_and_restarts_after_a_hole() {
        let mut h = History::new(10, 1000);
        h.restart(41);
        h.record_at(42, "a", "x");
        h.record_at(43, "b", "y");
        h.record_at(43, "b", "dup");
        assert_eq!(offsets(h.after(41).unwrap()), vec![42, 43]);
        // A hole: 44 and 45 never came, so nothing before 46 can be replayed.
        h.record_at(46, "c", "z");
        assert_eq!(h.last(), 46);
        assert_eq!(offsets(h.after(45).unwrap()), vec![46]);
        assert!(h.after(43).is_err());
    }

    fn offsets<'a>(it: impl Iterator<Item = Kept<'a>>) -> Vec<u64> {
        it.map(|k| k.offset).collect()
    }

    fn filled(max_count: usize, max_bytes: usize, n: u64) -> History {
        let mut h = History::new(max_count, max_bytes);
        for i in 1..=n {
            assert_eq!(h.record("ann", &format!("m{i}")), i);
        }
        h
    }

    #[test]
    fn offsets_start_at_one_and_replay_from_anywhere_kept() {
        let mut h = History::new(10, 1 << 20);
        assert_eq!((h.last(), h.next_offset(), h.oldest()), (0, 1, None));
        assert_eq!(offsets(h.after(0).unwrap()), Vec::<u64>::new());
        assert_eq!(h.after(1).err(), Some(TooOld), "beyond the newest");
        for i in 1..=5 {
            h.record("ann", &format!("m {i}"));
        }
        assert_eq!(offsets(h.after(0).unwrap()), vec![1, 2, 3, 4, 5]);
        assert_eq!(offsets(h.after(3).unwrap()), vec![4, 5]);
        assert_eq!(offsets(h.after(5).unwrap()), Vec::<u64>::new());
        assert_eq!(h.after(6).err(), Some(TooOld));
        let k = h.after(4).unwrap().next().unwrap();
        assert_eq!(
            k,
            Kept {
                offset: 5,
                from: "ann",
                text: "m 5"
            },
            "text keeps its spaces"
        );
        assert_eq!(offsets(h.newest(2)), vec![4, 5]);
        assert_eq!(offsets(h.newest(100)), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn the_count_bound_drops_the_oldest() {
        let h = filled(3, 1 << 20, 10);
        assert_eq!(h.len(), 3);
        assert_eq!(h.oldest(), Some(8));
        assert_eq!(
            offsets(h.after(7).unwrap()),
            vec![8, 9, 10],
            "oldest = offset + 1"
        );
        assert_eq!(h.after(6).err(), Some(TooOld));
        assert_eq!(h.after(0).err(), Some(TooOld));
        assert_eq!(offsets(h.after(10).unwrap()), Vec::<u64>::new());
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_until_the_new_one_fits() {
        // "ann mN" is 6 bytes for N < 10: 20 bytes hold 3 of them.
        let mut h = filled(1000, 20, 5);
        assert_eq!((h.len(), h.bytes(), h.oldest()), (3, 18, Some(3)));
        // 12 bytes: two of the old ones go.
        h.record("ann", "12345678");
        assert_eq!((h.len(), h.bytes(), h.oldest()), (2, 18, Some(5)));
        // Exactly the bound fits.
        h.record("ann", &"x".repeat(16));
        assert_eq!((h.len(), h.bytes(), h.oldest()), (1, 20, Some(7)));
        assert!(h.bytes() <= 20);
    }

    #[test]
    fn a_message_over_the_byte_bound_is_not_kept_and_takes_the_older_ones_with_it() {
        let mut h = filled(1000, 20, 3);
        assert_eq!(
            h.record("ann", &"x".repeat(17)),
            4,
            "it still gets its offset"
        );
        assert!(h.is_empty());
        assert_eq!(h.bytes(), 0);
        assert_eq!(h.after(2).err(), Some(TooOld), "no replay across the hole");
        assert_eq!(h.after(3).err(), Some(TooOld));
        assert_eq!(
            offsets(h.after(4).unwrap()),
            Vec::<u64>::new(),
            "nothing missed"
        );
        h.record("ann", "m5");
        assert_eq!(offsets(h.after(4).unwrap()), vec![5]);
    }

    #[test]
    fn history_off_keeps_nothing_but_counts() {
        let h = filled(0, 1 << 20, 4);
        assert_eq!((h.len(), h.last(), h.heap_bytes()), (0, 4, 0));
        assert_eq!(h.after(3).err(), Some(TooOld));
        assert_eq!(offsets(h.after(4).unwrap()), Vec::<u64>::new());
        assert_eq!(offsets(h.newest(10)), Vec::<u64>::new());
        let h = filled(10, 0, 2);
        assert!(h.is_empty(), "a zero byte bound keeps nothing either");
    }

    #[test]
    fn memory_stays_bounded_under_a_long_stream() {
        let mut h = History::new(1000, 64 * 1024);
        let text = "y".repeat(100);
        for _ in 0..100_000 {
            h.record("someone", &text);
        }
        assert!(h.bytes() <= 64 * 1024);
        assert_eq!(h.len(), 64 * 1024 / 108);
        // The log never grows while dropped messages could make room: at most about twice
        // the bound, plus a slot per message.
        assert!(
            h.heap_bytes() <= 2 * 64 * 1024 + 1024 * 8,
            "{}",
            h.heap_bytes()
        );
        assert_eq!(h.after(h.last() - h.len() as u64).unwrap().count(), h.len());
        h.clear();
        assert_eq!((h.len(), h.last()), (0, 100_000));
    }

    #[test]
    fn compaction_moves_each_byte_about_once() {
        // The default bounds (1,000 messages, 1 MiB) and relay-sized messages: the count
        // bound binds, and the kept bytes sit just under a power of two.
        let text = "y".repeat(100);
        for (max_count, max_bytes) in [(1000, 1 << 20), (100_000, 64 * 1024), (10, 1 << 20)] {
            let mut h = History::new(max_count, max_bytes);
            let n = 200_000u64;
            for _ in 0..n {
                h.record("publisher", &text);
            }
            let per_message = h.moved as f64 / n as f64;
            assert!(
                per_message <= 110.0 * 1.1,
                "{max_count}/{max_bytes}: {per_message:.0} bytes moved per 110-byte message"
            );
            assert!(h.heap_bytes() <= 2 * max_bytes + max_count.min(max_bytes) * 16);
            assert_eq!(h.newest(1).next().unwrap().text, text);
        }
    }
}
