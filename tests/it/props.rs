//! Property tests (proptest) for what hostile input reaches first: the line decoder, the wire
//! parsers and the config loader. These run in every `cargo test` on the stable toolchain; the
//! libFuzzer targets in `fuzz/` check the same properties where cargo-fuzz can build.

use std::path::Path;

use proptest::prelude::*;

use crate::support::{exclusive, ms, Watchdog};
use tcp_heartbeat::config::{ConfigError, FileConfig};
use tcp_heartbeat::core::auth::{AuthConfig, AuthError, AUTH_LEEWAY};
use tcp_heartbeat::core::room::validate_name;
use tcp_heartbeat::core::wire::{ClientMsg, LineDecoder, LineTooLong, ServerMsg};

/// Bytes that look like the wire often enough to reach every verb, plus anything at all.
fn wire_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"MSG ".to_vec()),
        Just(b"JOIN ".to_vec()),
        Just(b"PING ".to_vec()),
        Just(b"PONG ".to_vec()),
        Just(b"QUIT".to_vec()),
        Just(b"AUTH ".to_vec()),
        Just(b"HELLO hb/1 idle=1 interval=2 count=3".to_vec()),
        Just(b"ECHO ".to_vec()),
        Just(b"LEFT a closed".to_vec()),
        Just(b"ERR bad-utf8 ".to_vec()),
        Just(b"END quit".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b" ".to_vec()),
        Just(b"\xff\xfe".to_vec()),
        prop::collection::vec(any::<u8>(), 0..8),
        "[a-z0-9=/ ]{0,8}".prop_map(String::into_bytes),
    ];
    prop::collection::vec(token, 0..40).prop_map(|v| v.concat())
}

fn check_round_trips(line: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = ClientMsg::parse(line) {
        let wire = m.encode();
        prop_assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1);
        prop_assert_eq!(
            ClientMsg::parse(wire.trim_end_matches('\n').as_bytes()),
            Ok(m)
        );
    }
    if let Ok(m) = ServerMsg::parse(line) {
        let wire = m.encode();
        prop_assert!(wire.ends_with('\n') && wire.matches('\n').count() == 1);
        prop_assert_eq!(
            ServerMsg::parse(wire.trim_end_matches('\n').as_bytes()),
            Ok(m)
        );
    }
    Ok(())
}

/// Cases per property: with the optimised proptest build (Cargo.toml) the four properties
/// take a few seconds together.
const CASES: u32 = 10_000;

/// Property tests are CPU-bound for seconds: each holds the machine alone (the gate in
/// support.rs), so a timing test never shares a core with one.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Fed in any chunks, the decoder yields exactly the stream's lines (`\r\n` as `\n`),
/// never one longer than its limit, never holds more than limit + 1 bytes of an unfinished
/// line, and stops for good with LineTooLong once a line is too long.
#[test]
fn decoder_splits_like_the_reference_and_stays_bounded() {
    let _x = exclusive();
    let _w = Watchdog::new(
        "decoder_splits_like_the_reference_and_stays_bounded",
        ms(120_000),
    );
    proptest!(config(), |(data in wire_bytes(), max_line in 1usize..48, cuts in prop::collection::vec(1usize..20, 1..16))| {
        let mut dec = LineDecoder::new(max_line);
        let mut got: Vec<Vec<u8>> = Vec::new();
        let mut too_long = false;
        let (mut i, mut c) = (0, 0);
        'feed: while i < data.len() {
            let n = cuts[c % cuts.len()];
            c += 1;
            let chunk = &data[i..data.len().min(i + n)];
            i += n;
            dec.feed(chunk);
            loop {
                match dec.next_line() {
                    Ok(Some(line)) => {
                        prop_assert!(line.len() <= max_line);
                        prop_assert!(!line.contains(&b'\n'));
                        check_round_trips(line)?;
                        got.push(line.to_vec());
                    }
                    Ok(None) => {
                        prop_assert!(dec.pending() <= max_line + 1, "holds {}", dec.pending());
                        break;
                    }
                    Err(LineTooLong { max }) => {
                        prop_assert_eq!(max, max_line);
                        too_long = true;
                        break 'feed;
                    }
                }
            }
        }
        // The reference: split on \n, drop one trailing \r, stop at the first long line.
        let mut want: Vec<Vec<u8>> = Vec::new();
        let mut want_too_long = false;
        let mut parts: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
        let unfinished = parts.pop().unwrap_or(&[]);
        for p in parts {
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            if p.len() > max_line {
                want_too_long = true;
                break;
            }
            want.push(p.to_vec());
        }
        if !want_too_long && unfinished.len() > max_line + 1 {
            want_too_long = true;
        }
        if want_too_long {
            // The decoder may notice a long line in the middle of a chunk, before or after
            // the reference's: all it returned must still be a prefix of the reference.
            prop_assert!(too_long);
            prop_assert!(got.len() <= want.len());
            prop_assert_eq!(&got[..], &want[..got.len()]);
        } else {
            prop_assert!(!too_long);
            prop_assert_eq!(got, want);
            prop_assert_eq!(dec.pending(), unfinished.len());
        }
    });
}

/// Any bytes at all as one line: the parsers never panic, and what parses round-trips.
#[test]
fn parsers_never_panic_and_round_trip() {
    let _x = exclusive();
    let _w = Watchdog::new("parsers_never_panic_and_round_trip", ms(120_000));
    proptest!(config(), |(line in prop::collection::vec(any::<u8>(), 0..64))| {
        check_round_trips(&line)?;
    });
}

/// The same with lines that look like the wire.
#[test]
fn wire_like_lines_round_trip() {
    let _x = exclusive();
    let _w = Watchdog::new("wire_like_lines_round_trip", ms(120_000));
    proptest!(config(), |(line in wire_bytes())| {
        for l in line.split(|&b| b == b'\n') {
            check_round_trips(l)?;
        }
    });
}

/// Token-shaped text: three parts of base64url-ish characters, or anything.
fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9_=-]{0,40}\\.[A-Za-z0-9_=-]{0,60}\\.[A-Za-z0-9_=-]{0,44}",
        "[ -~]{0,80}",
        any::<String>(),
    ]
}

/// Claims as JSON text, mostly well-formed, with the claims that matter of every type.
fn claims_text() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..4_000_000_000).prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("\"ann\"".to_owned()),
        Just("\"\"".to_owned()),
        Just("\"a b\"".to_owned()),
        Just("null".to_owned()),
        Just("[1]".to_owned()),
        Just("-1".to_owned()),
    ];
    let key = prop_oneof![
        Just("sub"),
        Just("exp"),
        Just("nbf"),
        Just("aud"),
        Just("iat")
    ];
    prop_oneof![
        4 => prop::collection::vec((key, value), 0..6).prop_map(|kv| {
            let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", body.join(", ")).into_bytes()
        }),
        1 => prop::collection::vec(any::<u8>(), 0..40),
    ]
}

/// AUTH tokens (the fuzz target `auth` where cargo-fuzz runs): verifying any text never
/// panics nor quotes it; a payload signed with the key is never refused for its signature or
/// algorithm, and is accepted only with a usable `sub` and an `exp` (plus leeway) ahead.
#[test]
fn auth_verify_never_panics_and_accepts_only_valid_signed_claims() {
    use base64::Engine as _;
    let _x = exclusive();
    let _w = Watchdog::new(
        "auth_verify_never_panics_and_accepts_only_valid_signed_claims",
        ms(120_000),
    );
    const SECRET: &[u8] = b"the property's secret, 32 bytes!";
    let auth = AuthConfig::new(SECRET);
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let cfg = ProptestConfig {
        cases: CASES / 5,
        ..config()
    };
    proptest!(cfg, |(token in token_text(), claims in claims_text(), now in 0u64..4_000_000_000)| {
        let line = format!("AUTH {token}");
        if let Ok(ClientMsg::Auth(t)) = ClientMsg::parse(line.as_bytes()) {
            prop_assert_eq!(&t, &token);
        }
        if let Err(e) = auth.verify(&token, now) {
            prop_assert!(token.len() < 24 || token.contains(' ') || !e.to_string().contains(&token));
        }
        let message = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), b64(&claims));
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
        match auth.verify(&format!("{message}.{sig}"), now) {
            Ok(c) => {
                prop_assert!(validate_name(&c.sub).is_ok());
                prop_assert!(now < auth.valid_until(&c));
                prop_assert!(c.nbf.is_none_or(|n| now + AUTH_LEEWAY.as_secs() >= n));
            }
            Err(e) => prop_assert!(
                !matches!(e, AuthError::BadSignature | AuthError::WrongAlgorithm(_)),
                "{:?}", e
            ),
        }
    });
}

/// configuration.json: never a panic, and an error about a key names it.
#[test]
fn config_parse_never_panics_and_errors_name_the_key() {
    let _x = exclusive();
    let _w = Watchdog::new(
        "config_parse_never_panics_and_errors_name_the_key",
        ms(120_000),
    );
    proptest!(config(), |(text in config_text())| {
        match FileConfig::parse(&text, Path::new("prop.json")) {
            Ok(_) => {}
            Err(ConfigError::File { problems, .. }) => {
                prop_assert!(!problems.is_empty());
                for p in problems {
                    prop_assert!(!p.reason.is_empty());
                    if p.key != "(top level)" {
                        prop_assert!(text.contains(p.key.rsplit('.').next().unwrap()), "{} not in {}", p.key, text);
                    }
                }
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    });
}

/// JSON that is mostly well-formed, with the real keys, typos and values of every type.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("host"),
        Just("port"),
        Just("interval"),
        Just("count"),
        Just("idle"),
        Just("mode"),
        Just("wire"),
        Just("max_conns"),
        Just("max_line"),
        Just("queue"),
        Just("every"),
        Just("block"),
        Just("message"),
        Just("name"),
        Just("token"),
        Just("auth_secret"),
        Just("handshake_timeout"),
        Just("max_conns_per_ip"),
        Just("intreval"),
    ];
    let value = prop_oneof![
        Just("\"127.0.0.1\"".to_owned()),
        Just("\"8000\"".to_owned()),
        Just("\"250ms\"".to_owned()),
        Just("\"chat\"".to_owned()),
        Just("\"line\"".to_owned()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("{}".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        "\"[ -~]{0,12}\"".prop_map(|s| s.replace('\\', "")),
    ];
    let section = prop::collection::vec((key, value), 0..6).prop_map(|kv| {
        let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
        format!("{{{}}}", body.join(", "))
    });
    let top = prop_oneof![Just("server"), Just("client"), Just("servre")];
    prop_oneof![
        4 => prop::collection::vec((top, section), 0..3).prop_map(|s| {
            let body: Vec<String> = s.iter().map(|(k, v)| format!("\"{k}\": {v}")).collect();
            format!("{{{}}}", body.join(", "))
        }),
        1 => "[ -~]{0,40}",
    ]
}
