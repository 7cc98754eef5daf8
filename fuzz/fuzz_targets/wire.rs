//! The line wire: LineDecoder fed in arbitrary chunks, then ClientMsg::parse and
//! ServerMsg::parse on every line. Never panics; the decoder never holds more than
//! max_line + 1 bytes of an unfinished line; lines are at most max_line bytes without `\n`;
//! whatever parses survives encode → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcp_heartbeat::core::wire::{ClientMsg, LineDecoder, ServerMsg};

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    // Small limits reach the too-long paths; chunk sizes vary with the input.
    let max_line = usize::from(head % 64) + 1;
    let mut dec = LineDecoder::new(max_line);
    let mut i = 0;
    while i < rest.len() {
        let n = usize::from(rest[i] % 17) + 1;
        let chunk = &rest[i..rest.len().min(i + n)];
        i += n;
        dec.feed(chunk);
        loop {
            match dec.next_line() {
                Ok(Some(line)) => {
                    assert!(line.len() <= max_line);
                    assert!(!line.contains(&b'\n'));
                    check_line(line);
                }
                Ok(None) => {
                    assert!(dec.pending() <= max_line + 1, "holds {}", dec.pending());
                    break;
                }
                Err(_) => return,
            }
        }
    }
    // The whole input as one line too, without the decoder's limit (a line never holds `\n`).
    if !rest.contains(&b'\n') {
        check_line(rest);
    }
});

fn check_line(line: &[u8]) {
    if let Ok(m) = ClientMsg::parse(line) {
        let wire = m.encode();
        assert!(wire.ends_with('\n'));
        assert_eq!(
            ClientMsg::parse(wire.trim_end_matches('\n').as_bytes()),
            Ok(m)
        );
    }
    if let Ok(m) = ServerMsg::parse(line) {
        let wire = m.encode();
        assert!(wire.ends_with('\n'));
        assert_eq!(
            ServerMsg::parse(wire.trim_end_matches('\n').as_bytes()),
            Ok(m)
        );
    }
}
