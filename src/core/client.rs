//! The client's side of the line wire as a pure state machine.
//!
//! It decides when to send the next data message, when to answer a heartbeat (after the
//! configured `block` delay), and when the server has been silent too long to be alive: a live
//! server heartbeats a silent client after `idle`, so silence beyond `idle + count * interval`
//! (the server's own give-up time, learnt from `HELLO`) means it is gone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::wire::{ClientMsg, EndReason, ServerMsg};

/// How long to wait for the server's `HELLO` before calling it gone.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Client behaviour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Time between data messages; `None` sends none (the chat client sends what the user
    /// types instead).
    pub every: Option<Duration>,
    /// Delay before answering a heartbeat.
    pub block: Duration,
    /// The data message.
    pub message: String,
    /// Leave (QUIT) after this many data messages.
    pub messages: Option<u64>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The user or the script ended it (exit 0).
    UserEnded,
    /// The server sent `END reason` (exit 3).
    ServerEnded(EndReason),
    /// The server was silent for this long, or closed without `END` (exit 4).
    ServerLost(Duration),
}

impl Outcome {
    /// The contract's exit status for this outcome.
    pub fn exit_code(self) -> u8 {
        match self {
            Self::UserEnded => 0,
            Self::ServerEnded(_) => 3,
            Self::ServerLost(_) => 4,
        }
    }
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum ClientAction {
    /// Write this line.
    Send(ClientMsg),
    /// Stop: the session is over.
    Finish(Outcome),
}

/// The client state machine.
#[derive(Debug, Clone)]
pub struct Client {
    cfg: ClientConfig,
    /// Longest tolerated server silence; `HELLO_TIMEOUT` until `HELLO` arrives.
    patience: Duration,
    greeted: bool,
    last_rx: Instant,
    next_send: Option<Instant>,
    sent: u64,
    pongs: VecDeque<(Instant, String)>,
    quitting: bool,
    finished: Option<Outcome>,
}

impl Client {
    /// A client that connected at `now` and waits for `HELLO`.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        Self {
            cfg,
            patience: HELLO_TIMEOUT,
            greeted: false,
            last_rx: now,
            next_send: None,
            sent: 0,
            pongs: VecDeque::new(),
            quitting: false,
            finished: None,
        }
    }

    /// Data messages sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// True once the session is over.
    pub fn is_finished(&self) -> bool {
        self.finished.is_some()
    }

    /// A line from the server arrived at `now`. Returns the outcome when it ends the session.
    pub fn handle_msg(&mut self, now: Instant, msg: &ServerMsg) -> Option<Outcome> {
        if self.finished.is_some() {
            return self.finished;
        }
        self.last_rx = self.last_rx.max(now);
        match msg {
            ServerMsg::Hello {
                idle,
                interval,
                count,
                ..
            } if !self.greeted => {
                self.greeted = true;
                self.patience =
                    idle.saturating_add(interval.checked_mul(*count).unwrap_or(Duration::MAX));
                self.next_send = self.cfg.every.map(|_| now);
            }
            ServerMsg::Ping(token) => {
                let due = now.checked_add(self.cfg.block).unwrap_or(now);
                self.pongs.push_back((due, token.clone()));
            }
            ServerMsg::End(reason) => {
                let outcome = if self.quitting && *reason == EndReason::Quit {
                    Outcome::UserEnded
                } else {
                    Outcome::ServerEnded(*reason)
                };
                self.finished = Some(outcome);
            }
            _ => {}
        }
        self.finished
    }

    /// The server closed the connection (without `END`, or we would be finished).
    pub fn handle_eof(&mut self, now: Instant) -> Outcome {
        *self.finished.get_or_insert(if self.quitting {
            Outcome::UserEnded
        } else {
            Outcome::ServerLost(now.saturating_duration_since(self.last_rx))
        })
    }

    /// The user asked to leave: the line to send (the session ends on `END quit` or EOF).
    pub fn handle_quit(&mut self) -> ClientMsg {
        self.quitting = true;
        self.next_send = None;
        ClientMsg::Quit(None)
    }

    /// When [`Client::poll`] next has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.finished.is_some() {
            return None;
        }
        let lost = self.last_rx.checked_add(self.patience);
        [self.next_send, self.pongs.front().map(|p| p.0), lost]
            .into_iter()
            .flatten()
            .min()
    }

    /// What is due at `now`, one action per call; call again until `None`.
    #[must_use]
    pub fn poll(&mut self, now: Instant) -> Option<ClientAction> {
        if self.finished.is_some() {
            return None;
        }
        let silent = now.saturating_duration_since(self.last_rx);
        if silent >= self.patience {
            self.finished = Some(Outcome::ServerLost(silent));
            return self.finished.map(ClientAction::Finish);
        }
        if self.pongs.front().is_some_and(|p| p.0 <= now) {
            let (_, token) = self.pongs.pop_front()?;
            return Some(ClientAction::Send(ClientMsg::Pong(token)));
        }
        if self.next_send.is_some_and(|at| at <= now) {
            if self.cfg.messages.is_some_and(|n| self.sent >= n) {
                return Some(ClientAction::Send(self.handle_quit()));
            }
            self.sent += 1;
            let planned = self.next_send.unwrap_or(now);
            self.next_send = self
                .cfg
                .every
                .and_then(|every| planned.checked_add(every))
                .map(|at| at.max(now));
            return Some(ClientAction::Send(ClientMsg::Msg(self.cfg.message.clone())));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn cfg(every: u64, block: u64, messages: Option<u64>) -> ClientConfig {
        ClientConfig {
            every: Some(ms(every)),
            block: ms(block),
            message: "Hello, there".into(),
            messages,
        }
    }

    fn hello() -> ServerMsg {
        ServerMsg::Hello {
            idle: ms(3000),
            interval: ms(500),
            count: 3,
            mode: None,
        }
    }

    /// Steps to each deadline until `end`, returning (ms since t0, action).
    fn drain(c: &mut Client, t0: Instant, end: Instant) -> Vec<(u128, ClientAction)> {
        let mut out = Vec::new();
        while let Some(at) = c.poll_timeout() {
            if at > end {
                break;
            }
            while let Some(a) = c.poll(at) {
                out.push(((at - t0).as_millis(), a));
            }
        }
        out
    }

    #[test]
    fn sends_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        assert_eq!(c.handle_msg(t0, &hello()), None);
        let got = drain(&mut c, t0, t0 + ms(1000));
        let sends: Vec<u128> = got.iter().map(|g| g.0).collect();
        assert_eq!(sends, vec![0, 500, 1000]);
        assert!(got
            .iter()
            .all(|g| g.1 == ClientAction::Send(ClientMsg::Msg("Hello, there".into()))));
    }

    #[test]
    fn without_every_nothing_is_sent_but_heartbeats_are_answered() {
        let t0 = Instant::now();
        let mut c = Client::new(
            ClientConfig {
                every: None,
                ..cfg(1, 0, None)
            },
            t0,
        );
        let _ = c.handle_msg(t0, &hello());
        assert_eq!(c.poll(t0 + ms(1000)), None);
        let _ = c.handle_msg(t0 + ms(3000), &ServerMsg::Ping("1".into()));
        assert_eq!(
            c.poll(t0 + ms(3000)),
            Some(ClientAction::Send(ClientMsg::Pong("1".into())))
        );
        assert_eq!(c.sent(), 0);
    }

    #[test]
    fn heartbeats_are_answered_after_block() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 250, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let _ = c.poll(t0); // first message
        let _ = c.handle_msg(t0 + ms(3000), &ServerMsg::Ping("1".into()));
        let _ = c.handle_msg(t0 + ms(3500), &ServerMsg::Ping("2".into()));
        let got = drain(&mut c, t0, t0 + ms(4000));
        assert_eq!(
            got,
            vec![
                (3250, ClientAction::Send(ClientMsg::Pong("1".into()))),
                (3750, ClientAction::Send(ClientMsg::Pong("2".into())))
            ]
        );
    }

    #[test]
    fn end_from_server_finishes_with_its_reason() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let end = ServerMsg::End(EndReason::HeartbeatTimeout);
        assert_eq!(
            c.handle_msg(t0 + ms(10), &end),
            Some(Outcome::ServerEnded(EndReason::HeartbeatTimeout))
        );
        assert_eq!(c.poll(t0 + ms(10_000)), None);
        assert_eq!(Outcome::ServerEnded(EndReason::Quit).exit_code(), 3);
    }

    #[test]
    fn a_silent_server_is_lost_after_its_own_give_up_time() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(60_000, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        let _ = c.poll(t0);
        // idle 3000 + 3 x 500 = 4500 ms of silence.
        assert_eq!(c.poll_timeout(), Some(t0 + ms(4500)));
        assert_eq!(c.poll(t0 + ms(4499)), None);
        assert_eq!(
            c.poll(t0 + ms(4500)),
            Some(ClientAction::Finish(Outcome::ServerLost(ms(4500))))
        );
        assert_eq!(Outcome::ServerLost(ms(1)).exit_code(), 4);
    }

    #[test]
    fn no_hello_means_lost_after_the_hello_timeout() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(500, 0, None), t0);
        assert_eq!(c.poll_timeout(), Some(t0 + HELLO_TIMEOUT));
        assert!(matches!(
            c.poll(t0 + HELLO_TIMEOUT),
            Some(ClientAction::Finish(Outcome::ServerLost(_)))
        ));
    }

    #[test]
    fn message_limit_quits_and_end_quit_is_a_user_end() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(100, 0, Some(2)), t0);
        let _ = c.handle_msg(t0, &hello());
        let got = drain(&mut c, t0, t0 + ms(1000));
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[2], (200, ClientAction::Send(ClientMsg::Quit(None))));
        assert_eq!(
            c.handle_msg(t0 + ms(201), &ServerMsg::End(EndReason::Quit)),
            Some(Outcome::UserEnded)
        );
        assert_eq!(Outcome::UserEnded.exit_code(), 0);
    }

    #[test]
    fn eof_without_end_is_lost_unless_quitting() {
        let t0 = Instant::now();
        let mut c = Client::new(cfg(100, 0, None), t0);
        let _ = c.handle_msg(t0, &hello());
        assert_eq!(c.handle_eof(t0 + ms(5)), Outcome::ServerLost(ms(5)));
        let mut c = Client::new(cfg(100, 0, None), t0);
        let _ = c.handle_quit();
        assert_eq!(c.handle_eof(t0 + ms(5)), Outcome::UserEnded);
    }
}
