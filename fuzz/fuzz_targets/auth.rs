//! Authentication: arbitrary bytes as the token of an `AUTH` line (through ClientMsg::parse)
//! and as a token handed straight to AuthConfig::verify, then as the payload of a token
//! signed HS256 with the server's key, so the fuzzer gets past the signature into the claim
//! checks. Never panics; a token is accepted only with a usable `sub` and an `exp` (plus
//! leeway) still ahead of the time given; a refusal never quotes the token; a token signed
//! with the key is never refused for its signature or algorithm.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use tcp_heartbeat::core::auth::{AuthConfig, AuthError, Claims, AUTH_LEEWAY};
use tcp_heartbeat::core::room::validate_name;
use tcp_heartbeat::core::wire::ClientMsg;

const SECRET: &[u8] = b"the fuzzer's secret, 32 bytes ok";

fuzz_target!(|data: &[u8]| {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    // The first byte picks the time tokens are judged at, across the epoch's range of
    // interest (0 to about 2.5e9 s), so exp and nbf land on either side of it.
    let now = u64::from(head) * 10_000_000;
    let auth = AuthConfig::new(SECRET);

    let mut line = b"AUTH ".to_vec();
    line.extend_from_slice(rest);
    if let Ok(ClientMsg::Auth(token)) = ClientMsg::parse(&line) {
        let _ = check(&auth, &token, now);
    }
    let _ = check(&auth, &String::from_utf8_lossy(rest), now);

    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(rest)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(SECRET),
        Algorithm::HS256,
    )
    .expect("HMAC signing cannot fail");
    let signed = check(&auth, &format!("{message}.{signature}"), now);
    assert!(
        !matches!(
            signed,
            Err(AuthError::BadSignature | AuthError::WrongAlgorithm(_))
        ),
        "{signed:?}"
    );
});

fn check(auth: &AuthConfig, token: &str, now: u64) -> Result<Claims, AuthError> {
    let verdict = auth.verify(token, now);
    match &verdict {
        Ok(claims) => {
            assert!(validate_name(&claims.sub).is_ok(), "{claims:?}");
            assert!(now < auth.valid_until(claims), "{claims:?} at {now}");
            if let Some(nbf) = claims.nbf {
                assert!(
                    now.saturating_add(AUTH_LEEWAY.as_secs()) >= nbf,
                    "{claims:?}"
                );
            }
        }
        Err(e) => {
            let text = e.to_string();
            assert!(!text.is_empty() && !text.contains('\n'));
            // Long enough not to appear in the message by chance, and without a space: a
            // real token has none, while the messages' own words do (the fuzzer once offered
            // the text of an error message as the token, which of course is in the message).
            if token.len() >= 24 && !token.contains(' ') {
                assert!(!text.contains(token), "{text}");
            }
        }
    }
    verdict
}
