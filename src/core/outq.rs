//! A session's outbound queue: whole lines waiting for the socket, as a list of chunks.
//!
//! A chunk is either the session's own bytes (replies, heartbeats, `END`: small, copied in)
//! or a slice of a buffer shared by many sessions ([`SharedBytes`]): the chat relay builds a
//! batch of room lines once and every recipient queues a reference to it, so relaying to 100
//! members copies nothing per member (the kernel's copy into each socket is the only one).
//! The engine writes the front chunks with one vectored send ([`OutQueue::peek`]) and reports
//! how much the socket took ([`OutQueue::consume`]).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;
use std::sync::Arc;

/// Most slices [`OutQueue::peek`] hands out for one vectored write.
pub const MAX_SLICES: usize = 16;

/// Own chunks grow up to this before a new one is started (bounds a chunk's reallocation).
const OWN_CHUNK: usize = 16 * 1024;

/// An immutable byte buffer shared by several queues, and the part of it one queue holds.
#[derive(Debug, Clone)]
pub struct SharedBytes {
    buf: Arc<Vec<u8>>,
    range: Range<usize>,
}

impl SharedBytes {
    /// Shares `buf` (no copy).
    pub fn new(buf: Vec<u8>) -> Self {
        let range = 0..buf.len();
        Self {
            buf: Arc::new(buf),
            range,
        }
    }

    /// The sub-slice `r` (relative to this slice) sharing the same buffer.
    pub fn slice(&self, r: Range<usize>) -> Self {
        debug_assert!(r.start <= r.end && r.end <= self.len());
        Self {
            buf: self.buf.clone(),
            range: self.range.start + r.start..self.range.start + r.end,
        }
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    /// Its length.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }
}

#[derive(Debug)]
enum Chunk {
    Own(Vec<u8>),
    Shared(SharedBytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Own(v) => v,
            Chunk::Shared(s) => s.as_slice(),
        }
    }
}

/// The queue. See the module docs.
#[derive(Debug, Default)]
pub struct OutQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    head: usize,
    /// Bytes queued, not yet written.
    len: usize,
}

impl OutQueue {
    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `bytes`.
    pub fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        if let Some(Chunk::Own(v)) = self.chunks.back_mut() {
            if v.len() + bytes.len() <= OWN_CHUNK.max(v.capacity()) {
                v.extend_from_slice(bytes);
                return;
            }
        }
        let mut v = Vec::with_capacity(bytes.len().max(128));
        v.extend_from_slice(bytes);
        self.chunks.push_back(Chunk::Own(v));
    }

    /// Appends a shared slice (no copy).
    pub fn push_shared(&mut self, bytes: SharedBytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        self.chunks.push_back(Chunk::Shared(bytes));
    }

    /// Fills `out` with the next bytes to write, at most `max` of them in at most
    /// [`MAX_SLICES`] slices; returns how many slices it filled.
    pub fn peek<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES], max: usize) -> usize {
        let mut n = 0;
        let mut left = max;
        for (i, c) in self.chunks.iter().enumerate() {
            if n == MAX_SLICES || left == 0 {
                break;
            }
            let b = c.bytes();
            let b = if i == 0 { &b[self.head..] } else { b };
            let b = &b[..b.len().min(left)];
            left -= b.len();
            out[n] = IoSlice::new(b);
            n += 1;
        }
        n
    }

    /// Copies the next bytes (at most `max`) to the end of `buf`; returns how many.
    pub fn copy_to(&self, buf: &mut Vec<u8>, max: usize) -> usize {
        let mut left = max;
        for (i, c) in self.chunks.iter().enumerate() {
            if left == 0 {
                break;
            }
            let b = c.bytes();
            let b = if i == 0 { &b[self.head..] } else { b };
            let b = &b[..b.len().min(left)];
            buf.extend_from_slice(b);
            left -= b.len();
        }
        max - left
    }

    /// The socket took the first `n` bytes. Returns the last byte taken (None for n == 0).
    pub fn consume(&mut self, n: usize) -> Option<u8> {
        let mut n = n.min(self.len);
        let mut last = None;
        while n > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let avail = front.bytes().len() - self.head;
            let take = avail.min(n);
            last = Some(front.bytes()[self.head + take - 1]);
            n -= take;
            self.len -= take;
            if take == avail {
                self.chunks.pop_front();
                self.head = 0;
            } else {
                self.head += take;
            }
        }
        if self.len == 0 && self.chunks.capacity() > 64 {
            // A burst's chunk list goes back: an idle client should cost little.
            self.chunks = VecDeque::new();
        }
        last
    }

    /// Keeps only the first `keep` bytes waiting.
    pub fn truncate(&mut self, keep: usize) {
        if keep >= self.len {
            return;
        }
        let mut left = keep;
        let mut kept = 0;
        for (i, c) in self.chunks.iter_mut().enumerate() {
            let avail = c.bytes().len() - if i == 0 { self.head } else { 0 };
            if left == 0 {
                break;
            }
            kept += 1;
            if avail > left {
                let end = left + if i == 0 { self.head } else { 0 };
                match c {
                    Chunk::Own(v) => v.truncate(end),
                    Chunk::Shared(s) => *s = s.slice(0..end),
                }
                break;
            }
            left -= avail;
        }
        self.chunks.truncate(kept);
        if keep == 0 {
            self.chunks = VecDeque::new();
            self.head = 0;
        }
        self.len = keep;
    }

    /// Where the first `\n` is among the waiting bytes (its index from the front).
    pub fn find_newline(&self) -> Option<usize> {
        let mut base = 0;
        for (i, c) in self.chunks.iter().enumerate() {
            let b = c.bytes();
            let b = if i == 0 { &b[self.head..] } else { b };
            if let Some(p) = b.iter().position(|&x| x == b'\n') {
                return Some(base + p);
            }
            base += b.len();
        }
        None
    }

    /// The waiting bytes, copied (tests and rare paths).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        self.copy_to(&mut v, self.len);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peek_all(q: &OutQueue, max: usize) -> Vec<u8> {
        let mut out = [IoSlice::new(&[]); MAX_SLICES];
        let n = q.peek(&mut out, max);
        out[..n].iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn own_and_shared_bytes_leave_in_order() {
        let mut q = OutQueue::default();
        q.push(b"HELLO\n");
        let shared = SharedBytes::new(b"MSG a x\nMSG b y\n".to_vec());
        q.push_shared(shared.slice(0..8));
        q.push(b"PING 1\n");
        q.push_shared(shared.slice(8..16));
        assert_eq!(q.len(), 6 + 8 + 7 + 8);
        assert_eq!(
            peek_all(&q, usize::MAX),
            b"HELLO\nMSG a x\nPING 1\nMSG b y\n"
        );
        assert_eq!(peek_all(&q, 10), b"HELLO\nMSG ");
        assert_eq!(q.consume(3), Some(b'L'));
        assert_eq!(q.consume(3), Some(b'\n'));
        assert_eq!(q.consume(4), Some(b' '));
        assert_eq!(q.to_vec(), b"a x\nPING 1\nMSG b y\n");
        assert_eq!(q.find_newline(), Some(3));
        assert_eq!(q.consume(100), Some(b'\n'));
        assert!(q.is_empty());
    }

    #[test]
    fn truncate_keeps_the_front() {
        let mut q = OutQueue::default();
        let shared = SharedBytes::new(b"0123456789".to_vec());
        q.push(b"ab");
        q.push_shared(shared.clone());
        q.push(b"cd");
        q.consume(1);
        q.truncate(5);
        assert_eq!(q.to_vec(), b"b0123");
        q.truncate(0);
        assert!(q.is_empty());
        assert_eq!(q.to_vec(), b"");
        // The shared buffer itself is untouched.
        assert_eq!(shared.as_slice(), b"0123456789");
    }

    #[test]
    fn peek_is_bounded_in_slices() {
        let mut q = OutQueue::default();
        let shared = SharedBytes::new(vec![b'x'; 100]);
        for i in 0..40 {
            q.push_shared(shared.slice(i..i + 1));
        }
        let mut out = [IoSlice::new(&[]); MAX_SLICES];
        assert_eq!(q.peek(&mut out, usize::MAX), MAX_SLICES);
    }

    #[test]
    fn small_own_pushes_share_a_chunk() {
        let mut q = OutQueue::default();
        for _ in 0..100 {
            q.push(b"PING 1\n");
        }
        assert_eq!(q.chunks.len(), 1);
        let mut out = [IoSlice::new(&[]); MAX_SLICES];
        assert_eq!(q.peek(&mut out, usize::MAX), 1);
    }
}
