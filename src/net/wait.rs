//! The one way the server's threads sleep on descriptors: [`wait`] (poll(2) on a few
//! descriptors with a deadline) and [`Bell`] (an eventfd another thread rings to wake a
//! sleeper). poll(2) sleeps on a high-resolution timer, unlike SO_RCVTIMEO, whose wake-ups
//! can be a few jiffies late and would start heartbeat rounds that much behind schedule.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

pub use rustix::event::PollFlags;

/// Most descriptors one [`wait`] watches (the ready set is a 64-bit mask).
pub const MAX_FDS: usize = 64;

/// Which of the descriptors given to [`wait`] are ready (bit `i` for the `i`-th).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready(u64);

impl Ready {
    /// True when descriptor `i` is ready (or hung up, or failed: the next call reports it).
    pub fn is_ready(self, i: usize) -> bool {
        i < MAX_FDS && self.0 & (1 << i) != 0
    }

    /// True when any descriptor is ready.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// Waits at most `timeout` until one of `fds` (at most [`MAX_FDS`]; more are ignored) is
/// ready for `events` (`IN`: readable, `OUT`: writable; hang-ups and errors always count).
/// Returns which are; none when the time passed or a signal interrupted the wait.
pub fn wait<F: AsFd>(fds: &[F], events: PollFlags, timeout: Duration) -> io::Result<Ready> {
    use rustix::event::{poll, PollFd, Timespec};
    let ts = Timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let fds = &fds[..fds.len().min(MAX_FDS)];
    let mut polled: Vec<PollFd<'_>> = fds.iter().map(|f| PollFd::new(f, events)).collect();
    match poll(&mut polled, Some(&ts)) {
        Ok(_) => {
            let hit = events | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
            Ok(Ready(polled.iter().enumerate().fold(0, |m, (i, p)| {
                if p.revents().intersects(hit) {
                    m | (1 << i)
                } else {
                    m
                }
            })))
        }
        Err(rustix::io::Errno::INTR) => Ok(Ready::default()),
        Err(e) => Err(e.into()),
    }
}

/// Waits at most `timeout` until `fd` is ready for `events`; false when the time passed.
pub fn wait_one<F: AsFd>(fd: &F, events: PollFlags, timeout: Duration) -> io::Result<bool> {
    Ok(wait(&[fd.as_fd()], events, timeout)?.any())
}

/// An eventfd that wakes a thread sleeping in [`wait`] on it (costs one descriptor).
#[derive(Debug)]
pub struct Bell(OwnedFd);

impl Bell {
    /// A silent bell.
    pub fn new() -> io::Result<Self> {
        use rustix::event::{eventfd, EventfdFlags};
        Ok(Self(eventfd(
            0,
            EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
        )?))
    }

    /// Wakes the sleeper (rings stay pending until [`Bell::clear`]).
    pub fn ring(&self) {
        let _ = rustix::io::write(&self.0, &1u64.to_ne_bytes());
    }

    /// Silences the bell after a wake-up.
    pub fn clear(&self) {
        let mut b = [0u8; 8];
        let _ = rustix::io::read(&self.0, &mut b);
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_bell_wakes_a_wait_and_says_which() {
        let (a, b) = (Bell::new().unwrap(), Bell::new().unwrap());
        let t = Instant::now();
        assert!(!wait(&[&a, &b], PollFlags::IN, Duration::from_millis(20))
            .unwrap()
            .any());
        assert!(t.elapsed() >= Duration::from_millis(20));
        b.ring();
        let r = wait(&[&a, &b], PollFlags::IN, Duration::from_secs(5)).unwrap();
        assert!(!r.is_ready(0) && r.is_ready(1));
        b.clear();
        assert!(!wait_one(&b, PollFlags::IN, Duration::ZERO).unwrap());
    }
}
