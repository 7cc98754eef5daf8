//! Open-loop relay accounting: pure, unit-tested (the sockets are in `openloop`).
//!
//! A receiver's bytes go through one [`Tally`]: lines are split across reads, the numbered
//! payloads counted with a [`SeqTracker`], an `END reason` line remembered. A [`GapMeter`]
//! keeps the longest pause between two reads. [`summarize`] turns the receivers of one run
//! into the row the report prints.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::measure::parse_mark;
use super::verdict::SeqTracker;

/// Bytes of every open-loop message body (the chat line's text, the Redis PUBLISH payload).
pub const PAYLOAD: usize = 100;
/// Longest line a receiver keeps while waiting for its `\n`; a longer one is dropped and
/// counted (no peer under test sends one, so it means a framing bug, not a big message).
pub const MAX_LINE: usize = 64 * 1024;

/// Appends the body of message `seq` to `out`: `T<seq>:0#`, dots, and `T<seq>:0#` again,
/// [`PAYLOAD`] bytes in all, so every message of a run has the same size on the wire and
/// [`parse_mark`] finds the number whatever the peer wraps around it. The number is there
/// twice because `ncat --chat` prefixes `<userN> ` to every chunk it reads (8 KiB), not to
/// every line: a prefix landing inside one copy leaves the other whole. Seq 0 is a probe.
pub fn payload(seq: u64, out: &mut Vec<u8>) {
    let start = out.len();
    let mut mark = [0u8; 24];
    mark[0] = b'T';
    // Digits by hand: the publisher writes millions of these a second.
    let mut digits = [0u8; 20];
    let mut n = seq;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let d = digits.len() - i;
    mark[1..1 + d].copy_from_slice(&digits[i..]);
    mark[1 + d..4 + d].copy_from_slice(b":0#");
    let mark = &mark[..4 + d];
    out.extend_from_slice(mark);
    out.resize(start + PAYLOAD - mark.len(), b'.');
    out.extend_from_slice(mark);
}

/// What one receiver got, fed with its bytes as they arrive.
#[derive(Debug, Default)]
pub struct Tally {
    partial: Vec<u8>,
    /// The line being assembled grew past [`MAX_LINE`]: skip to its end.
    skipping: bool,
    seqs: SeqTracker,
    probes: u64,
    end: Option<String>,
    overlong: u64,
    counted: u64,
    counting: bool,
}

impl Tally {
    /// Counts new messages towards the window's rate while `on` (the publisher is running).
    pub fn set_counting(&mut self, on: bool) {
        self.counting = on;
    }

    /// Feeds bytes as read from the socket.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        // memchr: at millions of lines a second the receivers' thread, not the server, would
        // otherwise be what the open-loop measurement measures.
        while let Some(i) = memchr::memchr(b'\n', bytes) {
            let (line, rest) = (&bytes[..i], &bytes[i + 1..]);
            if self.skipping {
                self.skipping = false;
            } else if self.partial.is_empty() {
                self.line(line);
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                self.line(&whole);
                whole.clear();
                self.partial = whole;
            }
            bytes = rest;
        }
        if self.skipping {
            return;
        }
        if self.partial.len() + bytes.len() > MAX_LINE {
            self.overlong += 1;
            self.partial.clear();
            self.skipping = true;
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(reason) = line.strip_prefix(b"END ") {
            self.end
                .get_or_insert_with(|| String::from_utf8_lossy(reason).into_owned());
            return;
        }
        match parse_mark(line) {
            Some((0, _)) => self.probes += 1,
            Some((seq, _)) => {
                let new = self.seqs.record(seq);
                self.counted += u64::from(new && self.counting);
            }
            None => {}
        }
    }

    /// Probes (seq 0) seen: the receiver hears the publisher.
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// The reason of an `END` line received, if any.
    pub fn end(&self) -> Option<&str> {
        self.end.as_deref()
    }

    /// Distinct numbered messages received.
    pub fn received(&self) -> u64 {
        self.seqs.received()
    }

    /// Distinct messages received while counting was on.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// The sequence accounting.
    pub fn seqs(&self) -> &SeqTracker {
        &self.seqs
    }

    /// Lines dropped for being longer than [`MAX_LINE`], plus sequence numbers too large to
    /// record: either means a framing bug, never a big message.
    pub fn malformed(&self) -> u64 {
        self.overlong + self.seqs.out_of_range()
    }
}

/// The longest pause between two consecutive reads of one receiver.
#[derive(Debug, Default, Clone, Copy)]
pub struct GapMeter {
    last: Option<Instant>,
    max: Duration,
}

impl GapMeter {
    /// A read returned data at `at`.
    pub fn note(&mut self, at: Instant) {
        if let Some(last) = self.last {
            self.max = self.max.max(at.saturating_duration_since(last));
        }
        self.last = Some(at);
    }

    /// The longest pause seen.
    pub fn max(&self) -> Duration {
        self.max
    }
}

/// One receiver at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiverOutcome {
    /// Distinct messages received while the publisher ran.
    pub counted: u64,
    /// Distinct messages received in all (window and drain).
    pub received: u64,
    /// Its highest sequence number.
    pub highest: u64,
    /// Numbers missing below its highest.
    pub gaps: u64,
    /// Numbers that came after a higher one.
    pub reordered: u64,
    /// Messages that came twice.
    pub duplicates: u64,
    /// Ended by the server (`END`, EOF or reset) before hb-bench closed it.
    pub ended: bool,
    /// Longest pause between two reads while the publisher ran.
    pub max_gap: Duration,
}

/// The row of one open-loop run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpenStats {
    /// Messages delivered per second while the publisher ran, summed over receivers.
    pub deliveries_per_s: f64,
    /// The least-served receiver's messages per second.
    pub min_rate: f64,
    /// Receivers the server ended.
    pub ended: u64,
    /// Messages sent (accepted by the publisher's socket) that a receiver will never get,
    /// summed over receivers: everything an ended receiver missed, and the gaps of the others.
    pub lost: u64,
    /// Messages a receiver still connected had not got when the drain ended, all above its
    /// highest: still in the server's queues or socket buffers (the relay is in order), so
    /// late rather than lost. Summed over receivers.
    pub late: u64,
    /// Gaps, summed over receivers.
    pub gaps: u64,
    /// Reordered messages, summed.
    pub reordered: u64,
    /// Duplicates, summed.
    pub duplicates: u64,
    /// The longest pause any receiver saw.
    pub max_pause: Duration,
}

/// What a live receiver had not got yet, above its highest number (0 for an ended one).
fn late(r: &ReceiverOutcome, sent: u64) -> u64 {
    if r.ended {
        0
    } else {
        sent.saturating_sub(r.highest)
            .min(sent.saturating_sub(r.received))
    }
}

/// Summarizes the receivers of a run that sent `sent` messages in `window`.
pub fn summarize(rs: &[ReceiverOutcome], sent: u64, window: Duration) -> OpenStats {
    let secs = window.as_secs_f64().max(1e-9);
    OpenStats {
        deliveries_per_s: rs.iter().map(|r| r.counted).sum::<u64>() as f64 / secs,
        min_rate: rs.iter().map(|r| r.counted).min().unwrap_or(0) as f64 / secs,
        ended: rs.iter().filter(|r| r.ended).count() as u64,
        lost: rs
            .iter()
            .map(|r| sent.saturating_sub(r.received) - late(r, sent))
            .sum(),
        late: rs.iter().map(|r| late(r, sent)).sum(),
        gaps: rs.iter().map(|r| r.gaps).sum(),
        reordered: rs.iter().map(|r| r.reordered).sum(),
        duplicates: rs.iter().map(|r| r.duplicates).sum(),
        max_pause: rs.iter().map(|r| r.max_gap).max().unwrap_or_default(),
    }
}

/// The time at the start of a server log line (`2026-11-21T22:00:46.123Z ...`), if any.
pub fn log_time(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.splitn(3, ':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm), the inverse of `super::utc_date`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(
        UNIX_EPOCH
            + Duration::from_secs(days * 86_400 + h * 3600 + min * 60)
            + Duration::from_secs_f64(sec),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(seq: u64) -> Vec<u8> {
        let mut v = Vec::new();
        payload(seq, &mut v);
        v
    }

    #[test]
    fn payloads_are_fixed_size_and_parse_back() {
        for seq in [0, 7, 1_234_567, u64::MAX] {
            let b = body(seq);
            assert_eq!(b.len(), PAYLOAD);
            assert_eq!(parse_mark(&b), Some((seq, 0)));
        }
        assert!(body(42).starts_with(b"T42:0#...."));
        assert!(body(42).ends_with(b"....T42:0#"));
    }

    #[test]
    fn an_ncat_prefix_inside_one_mark_leaves_the_other() {
        // ncat --chat prefixes each 8 KiB chunk it reads, wherever the chunk starts.
        let b = body(1234);
        for cut in 0..b.len() {
            let mut line = b"<user1> ".to_vec();
            line.extend_from_slice(&b[..cut]);
            line.extend_from_slice(b"<user1> ");
            line.extend_from_slice(&b[cut..]);
            assert_eq!(parse_mark(&line), Some((1234, 0)), "cut at {cut}");
        }
    }

    #[test]
    fn lines_split_across_reads_are_counted_once() {
        let mut t = Tally::default();
        t.set_counting(true);
        let mut wire = b"HELLO hb/1 idle=1 interval=1 count=1 mode=chat\nMSG p ".to_vec();
        payload(0, &mut wire);
        wire.extend_from_slice(b"\n");
        for seq in 1..=5 {
            wire.extend_from_slice(b"MSG p ");
            payload(seq, &mut wire);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"END slow-consumer\n");
        // Every chunking of the same bytes gives the same counts.
        for chunk in [1, 3, 50, 101, wire.len()] {
            let mut t2 = Tally::default();
            t2.set_counting(true);
            for c in wire.chunks(chunk) {
                t2.feed(c);
            }
            assert_eq!((t2.probes(), t2.received(), t2.counted()), (1, 5, 5));
            assert_eq!(t2.end(), Some("slow-consumer"));
            assert_eq!(t2.seqs().gaps(), 0);
        }
        t.feed(&wire);
        // Counting off: received, not counted towards the window's rate.
        t.set_counting(false);
        let mut more = b"<user1> ".to_vec();
        payload(9, &mut more);
        more.push(b'\n');
        t.feed(&more);
        assert_eq!((t.received(), t.counted(), t.seqs().gaps()), (6, 5, 3));
    }

    #[test]
    fn redis_framing_counts_one_message_per_payload() {
        let mut t = Tally::default();
        t.set_counting(true);
        let mut wire = b"*3\r\n$9\r\nsubscribe\r\n$5\r\nbench\r\n:1\r\n".to_vec();
        for seq in [1, 2, 2, 4] {
            wire.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$100\r\n");
            payload(seq, &mut wire);
            wire.extend_from_slice(b"\r\n");
        }
        t.feed(&wire);
        let s = t.seqs();
        assert_eq!((s.received(), s.duplicates(), s.gaps()), (3, 1, 1));
    }

    #[test]
    fn an_overlong_line_is_dropped_and_counted() {
        let mut t = Tally::default();
        t.feed(&vec![b'x'; MAX_LINE]);
        t.feed(&[b'y'; 10]);
        let mut rest = b"zz\nMSG p ".to_vec();
        payload(1, &mut rest);
        rest.push(b'\n');
        t.feed(&rest);
        assert_eq!((t.malformed(), t.received()), (1, 1));
    }

    #[test]
    fn the_gap_meter_keeps_the_longest_pause() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut g = GapMeter::default();
        for at in [0, 5, 7, 300, 301] {
            g.note(t0 + ms(at));
        }
        assert_eq!(g.max(), ms(293));
        // A read stamped before the last one (clocks read on two threads) is no pause.
        g.note(t0 + ms(200));
        assert_eq!(g.max(), ms(293));
    }

    #[test]
    fn rows_sum_rates_and_count_loss_per_receiver() {
        let r = |counted, received, ended, gap| ReceiverOutcome {
            counted,
            received,
            highest: received,
            ended,
            max_gap: Duration::from_millis(gap),
            ..Default::default()
        };
        let s = summarize(
            &[r(1000, 1000, false, 3), r(400, 500, true, 90)],
            1000,
            Duration::from_secs(2),
        );
        assert_eq!(s.deliveries_per_s, 700.0);
        assert_eq!(s.min_rate, 200.0);
        assert_eq!((s.ended, s.lost, s.late), (1, 500, 0));
        assert_eq!(s.max_pause, Duration::from_millis(90));
        // A live receiver behind by 300 with 20 gaps: 20 lost, 300 late.
        let behind = ReceiverOutcome {
            received: 680,
            highest: 700,
            gaps: 20,
            ..Default::default()
        };
        let s = summarize(&[behind], 1000, Duration::from_secs(1));
        assert_eq!((s.lost, s.late), (20, 300));
        // The same receiver ended: all 320 are lost.
        let s = summarize(
            &[ReceiverOutcome {
                ended: true,
                ..behind
            }],
            1000,
            Duration::from_secs(1),
        );
        assert_eq!((s.lost, s.late), (320, 0));
        assert_eq!(summarize(&[], 5, Duration::from_secs(1)).lost, 0);
    }

    #[test]
    fn server_log_times_parse() {
        let t = log_time("2026-11-21T22:00:46.123Z #4 127.0.0.1:5 END slow-consumer sent").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_298_446);
        assert_eq!(d.subsec_millis(), 123);
        assert_eq!(
            super::super::utc_date(t),
            "2026-11-21 22:00 UTC",
            "inverse of utc_date"
        );
        assert_eq!(
            log_time("2000-03-01T00:00:00.000Z x"),
            Some(UNIX_EPOCH + Duration::from_secs(951_868_800))
        );
        assert_eq!(log_time("listening on 127.0.0.1:5"), None);
        assert_eq!(log_time("2026-13-01T00:00:00Z"), None);
    }
}
