//! `hb-client --chat`: an interactive chat client that reads the user's lines and the socket
//! at once, answers heartbeats by itself, and prints the room as it changes.

use std::io::{self, BufRead, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};

use crate::config::ClientSettings;
use crate::core::client::{Client, ClientAction, ClientConfig, Outcome};
use crate::core::wire::{ClientMsg, ErrCode, ServerMsg};
use crate::net::client::{connect, read_lines, ClientError, Incoming, QUIT_WAIT};

/// Token of the `PING` sent right after `JOIN`: its `PONG` confirms the name was taken.
const JOIN_CHECK: &str = "joined?";

/// What the user typed.
enum Input {
    Line(String),
    End,
}

/// How one user line is handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Send this text as `MSG`.
    Say(String),
    /// `/quit`: leave the room.
    Quit,
    /// An empty line: nothing to do.
    Nothing,
    /// An unknown `/command`: explain locally.
    Unknown(String),
}

/// Interprets one line typed by the user.
pub fn command(line: &str) -> Command {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.trim() {
        "" => Command::Nothing,
        "/quit" => Command::Quit,
        cmd if cmd.starts_with('/') && !cmd.starts_with("//") => Command::Unknown(cmd.to_owned()),
        // "//text" sends "/text", for messages that start with a slash.
        _ => Command::Say(
            line.strip_prefix('/')
                .filter(|l| l.starts_with('/'))
                .unwrap_or(line)
                .to_owned(),
        ),
    }
}

/// How a line from the server is shown, if at all.
pub fn render(msg: &ServerMsg) -> Option<String> {
    Some(match msg {
        ServerMsg::Msg { from, text } => format!("{from}: {text}"),
        ServerMsg::Joined(name) => format!("* {name} joined"),
        ServerMsg::Members(names) => format!("* in the room: {}", names.join(", ")),
        ServerMsg::Left { name, reason } => format!("* {name} left ({reason})"),
        ServerMsg::Err(bad) => format!("! {} {}", bad.code, bad.detail),
        ServerMsg::Echo(text) => format!("(echo) {text}"),
        ServerMsg::Hello { .. } | ServerMsg::Ping(_) | ServerMsg::Pong(_) | ServerMsg::End(_) => {
            return None
        }
    })
}

/// Runs a chat session as `name`: lines from `input` are sent, the room is printed on `out`.
/// Ends when the user types `/quit` or the input ends (0), the server ends it (3) or the
/// server is lost (4); `stop` (Ctrl-C) leaves like `/quit`.
pub fn run(
    settings: &ClientSettings,
    name: &str,
    input: impl BufRead + Send + 'static,
    out: &mut dyn Write,
    stop: &Receiver<()>,
) -> Result<Outcome, ClientError> {
    let stream = connect(&settings.host, settings.port)?;
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let (tx, rx) = crossbeam_channel::bounded(1024);
    let reader_stream = stream.try_clone().map_err(ClientError::Io)?;
    let reader = thread::Builder::new()
        .name("chat-socket".into())
        .spawn(move || read_lines(reader_stream, tx))
        .map_err(ClientError::Io)?;
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
    };
    let result = session(
        &stream,
        name,
        Client::new(cfg, Instant::now()),
        &rx,
        &in_rx,
        stop,
        out,
    );
    let _ = stream.shutdown(Shutdown::Both);
    let _ = reader.join();
    result
}

fn session(
    stream: &TcpStream,
    name: &str,
    mut client: Client,
    rx: &Receiver<Incoming>,
    input: &Receiver<Input>,
    stop: &Receiver<()>,
    out: &mut dyn Write,
) -> Result<Outcome, ClientError> {
    let send = |msg: &ClientMsg| (&*stream).write_all(msg.encode().as_bytes()).is_ok();
    // JOIN, then a PING whose PONG (which the server sends only after handling the JOIN)
    // confirms the name; an ERR in between means it was refused.
    if !send(&ClientMsg::Join(name.to_owned())) || !send(&ClientMsg::Ping(JOIN_CHECK.into())) {
        return Ok(client.handle_eof(Instant::now()));
    }
    let mut joined = false;
    let mut quit_by: Option<Instant> = None;
    let mut stop = stop.clone();
    let mut input = input.clone();
    let say = |out: &mut dyn Write, line: &str| {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    loop {
        let now = Instant::now();
        while let Some(action) = client.poll(now) {
            match action {
                ClientAction::Send(msg) => {
                    if !send(&msg) {
                        return Ok(client.handle_eof(Instant::now()));
                    }
                }
                ClientAction::Finish(outcome) => return Ok(outcome),
            }
        }
        let deadline = [client.poll_timeout(), quit_by].into_iter().flatten().min();
        let timeout = deadline.map_or(Duration::from_secs(3600), |d| {
            d.saturating_duration_since(Instant::now())
        });
        let mut leave = false;
        select! {
            recv(rx) -> inc => match inc {
                Ok(Incoming::Line(bytes, at)) => {
                    let Ok(msg) = ServerMsg::parse(&bytes) else {
                        say(out, &format!("! not understood: {}", String::from_utf8_lossy(&bytes)));
                        continue;
                    };
                    if !joined {
                        match &msg {
                            ServerMsg::Pong(t) if t == JOIN_CHECK => joined = true,
                            ServerMsg::Err(bad) if matches!(bad.code, ErrCode::NameTaken | ErrCode::MissingArgument) => {
                                return Err(ClientError::NameRefused(bad.detail.clone()));
                            }
                            _ => {}
                        }
                    }
                    if let Some(text) = render(&msg) {
                        say(out, &text);
                    }
                    if let Some(outcome) = client.handle_msg(at, &msg) {
                        return Ok(outcome);
                    }
                }
                Ok(Incoming::Closed(at)) => return Ok(client.handle_eof(at)),
                Err(_) => return Ok(client.handle_eof(Instant::now())),
            },
            recv(input) -> line => match line {
                Ok(Input::Line(line)) => match command(&line) {
                    Command::Say(text) => {
                        if !send(&ClientMsg::Msg(text)) {
                            return Ok(client.handle_eof(Instant::now()));
                        }
                    }
                    Command::Quit => leave = true,
                    Command::Nothing => {}
                    Command::Unknown(cmd) => say(out, &format!("! unknown command {cmd}; /quit leaves, //text sends /text")),
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
        if leave && quit_by.is_none() {
            stop = crossbeam_channel::never();
            input = crossbeam_channel::never();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::wire::{BadLine, EndReason};

    #[test]
    fn user_lines_become_commands() {
        assert_eq!(command("hello there"), Command::Say("hello there".into()));
        assert_eq!(command("/quit"), Command::Quit);
        assert_eq!(command("  /quit \r"), Command::Quit);
        assert_eq!(command(""), Command::Nothing);
        assert_eq!(command("   "), Command::Nothing);
        assert_eq!(command("/nick bob"), Command::Unknown("/nick bob".into()));
        assert_eq!(command("//etc/hosts"), Command::Say("/etc/hosts".into()));
    }

    #[test]
    fn room_lines_are_rendered_for_people() {
        let r = |m: ServerMsg| render(&m);
        assert_eq!(
            r(ServerMsg::Msg {
                from: "bob".into(),
                text: "hi".into()
            }),
            Some("bob: hi".into())
        );
        assert_eq!(
            r(ServerMsg::Joined("ann".into())),
            Some("* ann joined".into())
        );
        assert_eq!(
            r(ServerMsg::Left {
                name: "ann".into(),
                reason: EndReason::HeartbeatTimeout
            }),
            Some("* ann left (heartbeat-timeout)".into())
        );
        assert_eq!(
            r(ServerMsg::Err(BadLine {
                code: ErrCode::NotJoined,
                detail: "JOIN NAME first".into()
            })),
            Some("! not-joined JOIN NAME first".into())
        );
        assert_eq!(r(ServerMsg::Ping("1".into())), None);
    }
}
