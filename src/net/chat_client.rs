//! `hb-client --chat`: an interactive chat client that reads the user's lines and the socket
//! at once, answers heartbeats by itself, and prints the room as it changes, each line
//! prefixed with the local time.
//!
//! Joining, resuming, commands and rendering are decided by the pure [`Chat`] core, and
//! when to retry a lost connection by the pure [`Reconnect`] policy; this file owns the
//! socket, the user's input, the clock, the sleeps and the random draws.
//!
//! ## Reconnecting
//! A session that ends in a *loss* ([`should_reconnect`]) is not the end: the client
//! reconnects with backoff for up to `--reconnect-for`, resumes from the last position it
//! received (the server replays what it missed, or says it cannot), and goes on. What the
//! user types meanwhile waits in the input channel and is sent once the room took the client
//! back. A line written into the dying connection before the loss was noticed may be lost:
//! the client cannot tell whether the server got it.

use std::io::{self, BufRead, Write};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{select, Receiver};

use crate::config::{fmt_duration, ClientSettings, Mode};
use crate::core::client::{
    clock, should_reconnect, Chat, ChatStep, Client, ClientAction, ClientConfig, CloseKind, Jitter,
    Outcome, Reconnect,
};
use crate::core::wire::{ClientMsg, ServerMsg};
use crate::net::client::{ClientError, Link, Received, ServerReader, QUIT_WAIT};

/// What the user typed.
enum Input {
    Line(String),
    End,
}

/// Runs a chat session as `name`: lines from `input` are sent, the room is printed on `out`.
/// Ends when the user types `/quit` or the input ends (0), the server ends it (3) or the
/// server is lost for longer than `settings.reconnect_for` (4); `stop` (Ctrl-C) leaves like
/// `/quit`. A refused name is [`ClientError::NameRefused`] (exit 2), and nothing the user
/// typed is sent. Losses and reconnection attempts are reported on stderr; `out` gets one
/// notice line per resume.
pub fn run(
    settings: &ClientSettings,
    name: &str,
    input: impl BufRead + Send + 'static,
    out: &mut dyn Write,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    // The first connection must work: a server that is not there at all is an error (exit
    // 1), not something to wait for.
    let tls = crate::net::client::tls_config(settings)?;
    let open = || Link::open(settings, tls.as_ref());
    let mut conn = Some(open()?);
    let (in_tx, in_rx) = crossbeam_channel::bounded(1024);
    // Reading stdin cannot be interrupted; this thread simply ends with the process.
    thread::Builder::new()
        .name("chat-stdin".into())
        .spawn(move || {
            for line in input.lines() {
                let Ok(line) = line else { break };
                if in_tx.send(Input::Line(line)).is_err() {
                    return;
                }
            }
            let _ = in_tx.send(Input::End);
        })
        .map_err(ClientError::Io)?;
    let cfg = ClientConfig {
        every: None,
        block: settings.block,
        message: String::new(),
        messages: None,
        mode: Some(Mode::Chat),
        // The chat core sends the token itself, before its JOIN (Chat::join).
        token: None,
    };
    let offset = local_utc_offset();
    let mut say = |line: &str| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let _ = writeln!(out, "{}{line}", clock(secs, offset));
        let _ = out.flush();
    };
    let mut chat = Chat::new(name).with_auth(settings.token.clone());
    let mut jitter = Jitter::new(crate::net::os_random());
    // The outage under way: kept across attempts that fail before the room took us back.
    let mut outage: Option<Reconnect> = None;
    loop {
        if let Some((link, mut reader)) = conn.take() {
            let result = session(
                &link,
                &mut chat,
                Client::new(cfg.clone(), Instant::now()),
                &mut reader,
                &in_rx,
                stop,
                &mut say,
            );
            link.shutdown();
            drop(reader);
            let outcome = result?;
            if settings.reconnect_for.is_zero() || !should_reconnect(outcome) {
                return Ok(outcome);
            }
            let now = Instant::now();
            if !chat.is_resuming() {
                // The last session got through (or it was the first): a new outage.
                eprintln!(
                    "hb-client: {outcome}; reconnecting (for up to {})",
                    fmt_duration(settings.reconnect_for)
                );
                outage = Some(Reconnect::new(now, settings.reconnect_for));
            }
            chat.connection_lost(now);
        }
        let plan =
            outage.get_or_insert_with(|| Reconnect::new(Instant::now(), settings.reconnect_for));
        let Some(at) = plan.next_attempt(Instant::now(), jitter.next_u64()) else {
            return Ok(Outcome::Unreachable(settings.reconnect_for));
        };
        // Sleep until the attempt; Ctrl-C leaves at once (there is nothing to QUIT).
        if wait_until(at, stop) {
            return Ok(Outcome::UserEnded);
        }
        match open() {
            Ok(c) => conn = Some(c),
            Err(e) => eprintln!("hb-client: reconnect attempt {}: {e}", plan.attempts()),
        }
    }
}

/// Sleeps until `at`; true when `stop` fired meanwhile. A `stop` whose sender is gone never
/// fires (it would otherwise end every wait at once).
fn wait_until(at: Instant, stop: &Receiver<()>) -> bool {
    loop {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        select! {
            recv(stop) -> got => {
                if got.is_ok() {
                    return true;
                }
                thread::sleep(left);
            }
            default(left) => {}
        }
    }
}

/// Why the chat loop stops feeding.
enum Stop {
    Over(Outcome),
    Refused(String),
}

/// Hands everything already received to the cores, showing what is for the user.
fn feed(
    chat: &mut Chat,
    client: &mut Client,
    reader: &mut ServerReader,
    say: &mut dyn FnMut(&str),
) -> Option<Stop> {
    for got in reader.drain() {
        match got {
            Received::Bytes(bytes, at) => {
                if let Some(o) = client.handle_bytes(at, &bytes) {
                    return Some(Stop::Over(o));
                }
            }
            Received::Line(bytes, at) => {
                let Ok(msg) = ServerMsg::parse(&bytes) else {
                    say(&format!(
                        "! not understood: {}",
                        crate::core::display::safe_bytes(&bytes[..bytes.len().min(200)])
                    ));
                    continue;
                };
                match chat.handle_server(at, &msg) {
                    ChatStep::Refused(why) => return Some(Stop::Refused(why)),
                    ChatStep::Retry(why) => {
                        say(&why);
                        // As a loss: the reconnect loop waits its backoff and joins again.
                        return Some(Stop::Over(Outcome::ServerClosed(CloseKind::Closed)));
                    }
                    ChatStep::Show(line) => say(&line),
                    _ => {}
                }
                if let Some(o) = client.handle_msg(at, &msg) {
                    return Some(Stop::Over(o));
                }
            }
            Received::TooLong => {
                say("! the server sent a line too long to show");
                return Some(Stop::Over(client.handle_closed(CloseKind::Reset)));
            }
            Received::Closed(kind) => return Some(Stop::Over(client.handle_closed(kind))),
        }
    }
    None
}

/// One connection's session, from the join to its end.
fn session(
    link: &Link,
    chat: &mut Chat,
    mut client: Client,
    reader: &mut ServerReader,
    input: &Receiver<Input>,
    stop: &Receiver<()>,
    say: &mut dyn FnMut(&str),
) -> Result<Outcome, ClientError> {
    let send = |msg: &ClientMsg| link.write_all(msg.encode().as_bytes());
    let ready = reader.ready();
    let finish = |stop: Stop| match stop {
        Stop::Over(o) => Ok(o),
        Stop::Refused(why) => Err(ClientError::NameRefused(why)),
    };
    for msg in chat.join() {
        if !send(&msg) {
            return finish(
                feed(chat, &mut client, reader, say)
                    .unwrap_or(Stop::Over(client.handle_closed(CloseKind::Reset))),
            );
        }
    }
    let mut quit_by: Option<Instant> = None;
    let mut stop = stop.clone();
    let mut leaving = false;
    loop {
        // Everything already received comes first: silence is judged only on an empty socket.
        // The clock is read before the socket is drained, so whatever arrived up to `now` has
        // been seen when the core judges `now` (a client stopped between the two, e.g. by
        // SIGSTOP, would otherwise wake up past its deadline and call a server silent whose
        // END has been waiting in the socket).
        let now = Instant::now();
        if let Some(s) = feed(chat, &mut client, reader, say) {
            return finish(s);
        }
        reader.rearm();
        while let Some(action) = client.poll(now) {
            match action {
                ClientAction::Send(msg) => {
                    if !send(&msg) {
                        return finish(
                            feed(chat, &mut client, reader, say)
                                .unwrap_or(Stop::Over(client.handle_closed(CloseKind::Reset))),
                        );
                    }
                }
                ClientAction::Finish(outcome) => return Ok(outcome),
            }
        }
        let deadline = [client.poll_timeout(), quit_by].into_iter().flatten().min();
        let timeout = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        // The user's lines wait until the server confirmed the name: nothing is sent under
        // a name it refuses.
        let user = if chat.is_joined() && !leaving {
            input.clone()
        } else {
            crossbeam_channel::never()
        };
        let mut leave = false;
        select! {
            recv(ready) -> _ => {}
            recv(user) -> line => match line {
                Ok(Input::Line(line)) => match chat.handle_user(&line) {
                    ChatStep::Send(msg) => {
                        if !send(&msg) {
                            return finish(
                                feed(chat, &mut client, reader, say)
                                    .unwrap_or(Stop::Over(client.handle_closed(CloseKind::Reset))),
                            );
                        }
                    }
                    ChatStep::Show(text) => say(&text),
                    ChatStep::Quit => leave = true,
                    ChatStep::Nothing | ChatStep::Refused(_) | ChatStep::Retry(_) => {}
                },
                Ok(Input::End) | Err(_) => leave = true,
            },
            recv(stop) -> _ => leave = true,
            default(timeout) => {
                if quit_by.is_some_and(|q| Instant::now() >= q) {
                    return Ok(Outcome::UserEnded);
                }
            }
        }
        if leave && !leaving {
            leaving = true;
            stop = crossbeam_channel::never();
            quit_by = Some(Instant::now() + QUIT_WAIT);
            if !send(&client.handle_quit()) {
                return Ok(Outcome::UserEnded);
            }
        }
    }
}

/// The interactive client on stdin/stdout.
pub fn run_stdio(
    settings: &ClientSettings,
    name: &str,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    let stdin = io::BufReader::new(io::stdin());
    let mut stdout = io::stdout();
    run(settings, name, stdin, &mut stdout, stop)
}

/// The local offset from UTC in seconds, from the zone file `TZ` names (or
/// `/etc/localtime`); UTC when there is none. It takes the offset of the file's last
/// transition at or before now: exact for zones whose file lists their transitions (the
/// common "fat" files); a "slim" file in a zone with daylight saving may be an hour off in
/// summer, which only shifts the shown clock.
fn local_utc_offset() -> i32 {
    let path = match std::env::var("TZ") {
        Ok(tz) if tz.is_empty() || tz == "UTC" || tz == "UTC0" => return 0,
        Ok(tz) => {
            let tz = tz.strip_prefix(':').unwrap_or(&tz).to_owned();
            if tz.starts_with('/') {
                tz
            } else {
                format!("/usr/share/zoneinfo/{tz}")
            }
        }
        Err(_) => "/etc/localtime".to_owned(),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    std::fs::read(path)
        .ok()
        .and_then(|data| tzif_offset(&data, now))
        .unwrap_or(0)
}

/// The UTC offset a TZif file (RFC 8536) gives for `now` (from its transitions).
fn tzif_offset(data: &[u8], now: i64) -> Option<i32> {
    let be32 = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let counts = |at: usize| -> Option<[usize; 6]> {
        if data.get(at..at + 4)? != b"TZif" {
            return None;
        }
        let mut c = [0; 6];
        for (i, slot) in c.iter_mut().enumerate() {
            *slot = be32(at + 20 + 4 * i)? as usize;
        }
        Some(c)
    };
    let [isut, isstd, leap, time, typ, chars] = counts(0)?;
    let (base, tsize, [_, _, _, time, typ, _]) = if *data.get(4)? >= b'2' {
        // Version 2+: skip the 32-bit block, use the 64-bit one.
        let v1 = 44 + time * 5 + typ * 6 + chars + leap * 8 + isstd + isut;
        (v1 + 44, 8, counts(v1)?)
    } else {
        (44, 4, [isut, isstd, leap, time, typ, chars])
    };
    let at = |i: usize| -> Option<i64> {
        let p = base + i * tsize;
        Some(if tsize == 8 {
            i64::from_be_bytes(data.get(p..p + 8)?.try_into().ok()?)
        } else {
            i64::from(be32(p)? as i32)
        })
    };
    let idx_base = base + time * tsize;
    let types_base = idx_base + time;
    let mut ty = 0usize;
    for i in 0..time {
        if at(i)? > now {
            break;
        }
        ty = usize::from(*data.get(idx_base + i)?);
    }
    if ty >= typ {
        return None;
    }
    Some(be32(types_base + ty * 6)? as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_zone_files_give_offset_zero() {
        for path in ["/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Etc/UTC"] {
            if let Ok(data) = std::fs::read(path) {
                assert_eq!(tzif_offset(&data, 1_795_298_446), Some(0), "{path}");
            }
        }
    }

    /// A version-1 TZif file: one transition at t=1000 from +01:00 to +02:00.
    fn tiny_tzif() -> Vec<u8> {
        let mut f = b"TZif".to_vec();
        f.extend([0u8; 16]);
        for count in [0u32, 0, 0, 1, 2, 4] {
            f.extend(count.to_be_bytes());
        }
        f.extend(1000i32.to_be_bytes());
        f.push(1);
        f.extend(3600i32.to_be_bytes());
        f.extend([0, 0]);
        f.extend(7200i32.to_be_bytes());
        f.extend([1, 0]);
        f.extend(b"XX\0\0");
        f
    }

    #[test]
    fn a_zone_file_gives_the_offset_in_force_at_that_time() {
        let f = tiny_tzif();
        assert_eq!(tzif_offset(&f, 999), Some(3600));
        assert_eq!(tzif_offset(&f, 1000), Some(7200));
        assert_eq!(tzif_offset(&f, 1_795_298_446), Some(7200));
        assert_eq!(tzif_offset(&f[..50], 0), None);
        assert_eq!(tzif_offset(b"not a zone file", 0), None);
        assert_eq!(tzif_offset(b"", 0), None);
    }
}
