//! Authentication (`--auth-secret`, CONTRACT section 9), sans-IO: verifying the JWT a client
//! presents in `AUTH TOKEN`, against a time it is given.
//!
//! ## The rule
//! A token is a JWT (RFC 7519) signed HS256 with the server's secret. It must carry `exp`
//! (seconds since the Unix epoch) and `sub`, the only name the client may `JOIN` under (a
//! valid chat name, [`crate::core::room::validate_name`]); `nbf`, when present, is honoured.
//! Time claims get [`AUTH_LEEWAY`] either way for clock skew between the minting backend and
//! this server: a token is valid while `now < exp + leeway` and once `now + leeway >= nbf`
//! (RFC 7519 4.1.4/4.1.5). Any other algorithm is refused, `none` included, whatever the
//! token says: the server decides the algorithm, never the token.
//!
//! The signature is checked (by `jsonwebtoken`, in constant time) before any claim is looked
//! at, so a forged token learns nothing about what the server would accept. The time claims
//! are checked here rather than by `jsonwebtoken`, whose check reads the system clock: the
//! session passes the wall-clock time it derives from the engine's reading at accept (see
//! [`crate::core::session::Session::new`]), so tests move time freely.
//!
//! Nothing here ever puts the token in an error message or a `Debug` output: refusals are
//! logged, and a log must not hand out credentials.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::core::wire::printable;

/// Clock skew tolerated on `exp` and `nbf`.
pub const AUTH_LEEWAY: Duration = Duration::from_secs(30);

/// A secret shorter than this is accepted but weak: HS256 wants at least 256 bits of key
/// (RFC 7518 3.2), and a short one can be guessed offline from any token.
pub const MIN_SECRET_BYTES: usize = 32;

/// Longest token looked at. Real tokens are a few hundred bytes; a longer one is refused
/// before any base64 or HMAC work, so a hostile client cannot make the server hash 64 KiB
/// lines.
pub const MAX_TOKEN: usize = 8 * 1024;

/// The only algorithm accepted, as a token's header names it.
const ALG: &str = "HS256";

/// The claims a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subject: the one chat name this client may use.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch (fractions dropped).
    pub exp: u64,
    /// Not before, seconds since the Unix epoch, when the token has it.
    pub nbf: Option<u64>,
}

/// Why a token was refused. The text says why for the server's log; it never holds the
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Not a JWT: not three base64url parts, a header or payload that is not JSON, a claim
    /// of the wrong type, or longer than [`MAX_TOKEN`].
    BadFormat(String),
    /// The signature does not match: another secret, or a changed token.
    BadSignature,
    /// The header names another algorithm than HS256 (`none`, HS384, RS256, ...).
    WrongAlgorithm(String),
    /// `exp` (plus the leeway) has passed.
    Expired {
        /// The token's `exp`.
        exp: u64,
        /// The time it was judged at.
        now: u64,
    },
    /// `nbf` (less the leeway) has not come yet.
    NotYetValid {
        /// The token's `nbf`.
        nbf: u64,
        /// The time it was judged at.
        now: u64,
    },
    /// No `exp`: the contract requires one (a token must not be valid forever).
    MissingExp,
    /// No `sub`, an empty one, or one that is not a string.
    MissingSub,
    /// `sub` is not a name the room would take.
    BadSub(String),
    /// The token has an `aud` claim; this server names no audience, and RFC 7519 4.1.3 says
    /// a principal not named in `aud` must refuse it.
    Audience,
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadFormat(why) => write!(f, "not a valid JWT: {why}"),
            Self::BadSignature => {
                f.write_str("bad signature (another secret, or an altered token)")
            }
            Self::WrongAlgorithm(alg) => {
                write!(f, "algorithm {alg} refused (only {ALG} is accepted)")
            }
            Self::Expired { exp, now } => write!(
                f,
                "token expired (exp {exp}, now {now}, leeway {} s)",
                AUTH_LEEWAY.as_secs()
            ),
            Self::NotYetValid { nbf, now } => write!(
                f,
                "token not valid yet (nbf {nbf}, now {now}, leeway {} s)",
                AUTH_LEEWAY.as_secs()
            ),
            Self::MissingExp => f.write_str("token has no exp claim (one is required)"),
            Self::MissingSub => f.write_str("token has no sub claim, or an empty one"),
            Self::BadSub(why) => write!(f, "token's sub is not a usable chat name: {why}"),
            Self::Audience => {
                f.write_str("token has an aud claim, and this server names no audience")
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// Why a secret cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretError {
    /// Nothing left once the trailing newline is stripped.
    Empty,
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("the secret is empty"),
        }
    }
}

impl std::error::Error for SecretError {}

/// The server's side of authentication: the HS256 key and how tokens are judged.
#[derive(Clone)]
pub struct AuthConfig {
    /// Kept to compare settings ([`PartialEq`]); never shown.
    secret: Vec<u8>,
    key: DecodingKey,
    validation: Validation,
}

impl AuthConfig {
    /// The key from a secret file's bytes: one trailing `\n` or `\r\n` is stripped (the one
    /// an editor or `echo` adds), nothing else, so the key is exactly what a backend reading
    /// the same file without its line end uses.
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        let secret = bytes
            .strip_suffix(b"\r\n")
            .or_else(|| bytes.strip_suffix(b"\n"))
            .unwrap_or(bytes);
        if secret.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self::new(secret))
    }

    /// The key is `secret`, as is.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // exp and nbf are judged in `verify` against the time given, not the system clock;
        // the required claims too, so each missing one has its own reason.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Self {
            secret: secret.to_vec(),
            key: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Length of the secret in bytes (under [`MIN_SECRET_BYTES`] deserves a warning).
    pub fn secret_len(&self) -> usize {
        self.secret.len()
    }

    /// True for a secret shorter than [`MIN_SECRET_BYTES`].
    pub fn is_weak(&self) -> bool {
        self.secret.len() < MIN_SECRET_BYTES
    }

    /// The last second (since the Unix epoch, exclusive) at which `claims` are still valid:
    /// `exp` plus the leeway.
    pub fn valid_until(&self, claims: &Claims) -> u64 {
        claims.exp.saturating_add(AUTH_LEEWAY.as_secs())
    }

    /// Verifies `token` at `unix_now` (seconds since the Unix epoch): the signature, the
    /// algorithm, then the claims. See the module docs for the rule.
    pub fn verify(&self, token: &str, unix_now: u64) -> Result<Claims, AuthError> {
        if token.len() > MAX_TOKEN {
            return Err(AuthError::BadFormat(format!(
                "longer than {MAX_TOKEN} bytes"
            )));
        }
        let alg = header_alg(token)?;
        if alg != ALG {
            return Err(AuthError::WrongAlgorithm(printable(alg.as_bytes(), 16)));
        }
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|e| refusal(e.kind()))?;
        let claims = data.claims;
        let exp = match claims.get("exp") {
            None => return Err(AuthError::MissingExp),
            Some(v) => numeric_date(v).ok_or_else(|| {
                AuthError::BadFormat("exp is not a number of seconds since the epoch".into())
            })?,
        };
        let nbf = match claims.get("nbf") {
            None => None,
            Some(v) => Some(numeric_date(v).ok_or_else(|| {
                AuthError::BadFormat("nbf is not a number of seconds since the epoch".into())
            })?),
        };
        let sub = sub_claim(&claims)?;
        let claims = Claims { sub, exp, nbf };
        if unix_now >= self.valid_until(&claims) {
            return Err(AuthError::Expired { exp, now: unix_now });
        }
        if let Some(nbf) = nbf {
            if unix_now.saturating_add(AUTH_LEEWAY.as_secs()) < nbf {
                return Err(AuthError::NotYetValid { nbf, now: unix_now });
            }
        }
        Ok(claims)
    }
}

impl fmt::Debug for AuthConfig {
    // The secret stays out of debug output (and so out of logs and panics).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthConfig {{ secret: {} bytes }}", self.secret.len())
    }
}

impl PartialEq for AuthConfig {
    fn eq(&self, other: &Self) -> bool {
        self.secret == other.secret
    }
}

impl Eq for AuthConfig {}

/// `sub` of a token, read *without* verifying anything: for a client, which has no secret,
/// to learn the name its token is for. Never use it to trust a token.
pub fn unverified_sub(token: &str) -> Result<String, AuthError> {
    let payload = token
        .split('.')
        .nth(1)
        .filter(|_| token.split('.').count() == 3)
        .ok_or_else(|| AuthError::BadFormat("not three parts separated by '.'".into()))?;
    let claims: Map<String, Value> = decode_json(payload, "payload")?;
    sub_claim(&claims)
}

/// The `alg` a token's header names.
fn header_alg(token: &str) -> Result<String, AuthError> {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    if parts.count() != 2 {
        return Err(AuthError::BadFormat(
            "not three parts separated by '.'".into(),
        ));
    }
    let header: Map<String, Value> = decode_json(header, "header")?;
    match header.get("alg") {
        Some(Value::String(alg)) => Ok(alg.clone()),
        _ => Err(AuthError::BadFormat("the header names no alg".into())),
    }
}

/// One base64url part of a token as a JSON object.
fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, AuthError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::BadFormat(format!("the {what} is not base64url")))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| AuthError::BadFormat(format!("the {what} is not a JSON object")))
}

/// `sub` as a usable chat name.
fn sub_claim(claims: &Map<String, Value>) -> Result<String, AuthError> {
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => {
            crate::core::room::validate_name(s).map_err(|e| {
                let why = e.detail.split_once(": ").map_or(e.detail.as_str(), |x| x.1);
                AuthError::BadSub(format!("'{}' ({why})", printable(s.as_bytes(), 40)))
            })?;
            Ok(s.clone())
        }
        _ => Err(AuthError::MissingSub),
    }
}

/// A NumericDate (RFC 7519 2): seconds since the epoch, an integer or a decimal; fractions
/// are dropped. Negative, non-finite or non-numbers are not dates.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    // `as` saturates at u64::MAX for the largest finite values.
    (f.is_finite() && f >= 0.0).then_some(f as u64)
}

/// What a `jsonwebtoken` error means for the client.
fn refusal(kind: &ErrorKind) -> AuthError {
    match kind {
        ErrorKind::InvalidSignature | ErrorKind::Crypto(_) => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            AuthError::WrongAlgorithm("(unknown)".into())
        }
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::Base64(_) => AuthError::BadFormat("a part is not base64url".into()),
        ErrorKind::Json(_) | ErrorKind::Utf8(_) => {
            AuthError::BadFormat("the header or payload is not the JSON of a JWT".into())
        }
        _ => AuthError::BadFormat("not three base64url parts".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_800_000_000;

    fn mint(alg: Algorithm, secret: &[u8], claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn hs256(claims: Value) -> String {
        mint(Algorithm::HS256, SECRET, &claims)
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn auth() -> AuthConfig {
        AuthConfig::new(SECRET)
    }

    #[test]
    fn a_valid_token_gives_its_claims() {
        let t = hs256(json!({"sub": "ann", "exp": NOW + 60}));
        assert_eq!(
            auth().verify(&t, NOW),
            Ok(Claims {
                sub: "ann".into(),
                exp: NOW + 60,
                nbf: None
            })
        );
        // Other claims are ignored; a decimal exp is a NumericDate too.
        let t = hs256(
            json!({"sub": "bob", "exp": (NOW + 60) as f64 + 0.5, "nbf": NOW, "iat": NOW, "x": [1]}),
        );
        assert_eq!(
            auth().verify(&t, NOW),
            Ok(Claims {
                sub: "bob".into(),
                exp: NOW + 60,
                nbf: Some(NOW)
            })
        );
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let payload = b64(&json!({"sub": "ann", "exp": NOW + 60}).to_string());
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None"}"#,
            r#"{"alg":"HS384","typ":"JWT"}"#,
            r#"{"alg":"RS256","typ":"JWT"}"#,
        ] {
            // A `none` token has an empty signature; the others a made-up one.
            for sig in ["", "c2ln"] {
                let t = format!("{}.{payload}.{sig}", b64(header));
                let e = auth().verify(&t, NOW).unwrap_err();
                assert!(matches!(e, AuthError::WrongAlgorithm(_)), "{header}: {e:?}");
            }
        }
        // A real HS384 token made with the right secret is refused just the same.
        let t = mint(
            Algorithm::HS384,
            SECRET,
            &json!({"sub": "ann", "exp": NOW + 60}),
        );
        assert_eq!(
            auth().verify(&t, NOW),
            Err(AuthError::WrongAlgorithm("HS384".into()))
        );
        assert_eq!(
            AuthError::WrongAlgorithm("none".into()).to_string(),
            "algorithm none refused (only HS256 is accepted)"
        );
    }

    #[test]
    fn a_wrong_signature_is_refused_before_any_claim_is_read() {
        let other = mint(
            Algorithm::HS256,
            b"another secret, also 32 bytes...",
            &json!({"sub": "ann", "exp": NOW + 60}),
        );
        assert_eq!(auth().verify(&other, NOW), Err(AuthError::BadSignature));
        // Expired and unsigned by us: the signature is what is reported.
        let old = mint(
            Algorithm::HS256,
            b"x",
            &json!({"sub": "ann", "exp": NOW - 3600}),
        );
        assert_eq!(auth().verify(&old, NOW), Err(AuthError::BadSignature));
        // A payload changed after signing.
        let good = hs256(json!({"sub": "ann", "exp": NOW + 60}));
        let parts: Vec<&str> = good.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&json!({"sub": "root", "exp": NOW + 60}).to_string()),
            parts[2]
        );
        assert_eq!(auth().verify(&forged, NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn exp_and_nbf_are_judged_with_the_leeway_at_the_time_given() {
        let exp = |e: u64| hs256(json!({"sub": "ann", "exp": e}));
        // Valid while now < exp + 30.
        assert!(auth().verify(&exp(NOW - 29), NOW).is_ok());
        assert_eq!(
            auth().verify(&exp(NOW - 30), NOW),
            Err(AuthError::Expired {
                exp: NOW - 30,
                now: NOW
            })
        );
        assert!(auth().verify(&exp(NOW + 3600), NOW).is_ok());
        assert!(matches!(
            auth().verify(&exp(NOW + 3600), NOW + 3630),
            Err(AuthError::Expired { .. })
        ));
        // Valid once now + 30 >= nbf.
        let nbf = |n: u64| hs256(json!({"sub": "ann", "exp": NOW + 3600, "nbf": n}));
        assert!(auth().verify(&nbf(NOW + 30), NOW).is_ok());
        assert_eq!(
            auth().verify(&nbf(NOW + 31), NOW),
            Err(AuthError::NotYetValid {
                nbf: NOW + 31,
                now: NOW
            })
        );
        assert!(auth().verify(&nbf(NOW + 31), NOW + 1).is_ok());
        // Far future and the epoch itself do not overflow.
        assert!(auth().verify(&exp(u64::MAX), NOW).is_ok());
        assert!(auth().verify(&exp(0), 0).is_ok());
        assert_eq!(
            auth().valid_until(&auth().verify(&exp(u64::MAX), NOW).unwrap()),
            u64::MAX
        );
    }

    #[test]
    fn required_claims_and_their_types() {
        for (claims, want) in [
            (json!({"sub": "ann"}), AuthError::MissingExp),
            (json!({"exp": NOW + 60}), AuthError::MissingSub),
            (json!({"sub": "", "exp": NOW + 60}), AuthError::MissingSub),
            (json!({"sub": 7, "exp": NOW + 60}), AuthError::MissingSub),
            (
                json!({"sub": "ann", "exp": "tomorrow"}),
                AuthError::BadFormat("exp is not a number of seconds since the epoch".into()),
            ),
            (
                json!({"sub": "ann", "exp": -5}),
                AuthError::BadFormat("exp is not a number of seconds since the epoch".into()),
            ),
            (
                json!({"sub": "ann", "exp": NOW + 60, "nbf": null}),
                AuthError::BadFormat("nbf is not a number of seconds since the epoch".into()),
            ),
            (
                json!({"sub": "ann", "exp": NOW + 60, "aud": "web"}),
                AuthError::Audience,
            ),
        ] {
            assert_eq!(
                auth().verify(&hs256(claims.clone()), NOW),
                Err(want),
                "{claims}"
            );
        }
        for (sub, why) in [
            ("a b", "no spaces or control characters"),
            ("x\u{1b}[2J", "no spaces or control characters"),
            (&"x".repeat(33)[..], "at most 32 characters"),
        ] {
            let e = auth()
                .verify(&hs256(json!({"sub": sub, "exp": NOW + 60})), NOW)
                .unwrap_err();
            let AuthError::BadSub(text) = &e else {
                panic!("{sub:?}: {e:?}")
            };
            assert!(text.ends_with(&format!("({why})")), "{text}");
            assert!(!text.contains('\u{1b}'), "printable: {text}");
        }
    }

    #[test]
    fn malformed_tokens_are_bad_format_and_never_quoted() {
        let long = "a".repeat(MAX_TOKEN + 1);
        for t in [
            "",
            "abc",
            "a.b",
            "a.b.c.d",
            "!!.??.**",
            "e30.e30.",
            &long,
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln",
            "eyJhbGciOiJIUzI1NiJ9.W10.c2ln",
        ] {
            let e = auth().verify(t, NOW).unwrap_err();
            assert!(
                matches!(e, AuthError::BadFormat(_) | AuthError::BadSignature),
                "{t:?}: {e:?}"
            );
            if t.len() > 3 {
                assert!(!e.to_string().contains(t), "{e}");
            }
        }
        // A header without alg, or alg not a string.
        for header in [r#"{"typ":"JWT"}"#, r#"{"alg":256}"#] {
            let t = format!("{}.e30.", b64(header));
            assert_eq!(
                auth().verify(&t, NOW),
                Err(AuthError::BadFormat("the header names no alg".into()))
            );
        }
    }

    #[test]
    fn the_secret_file_loses_one_line_end_only() {
        let key = |b: &[u8]| AuthConfig::from_file_bytes(b).map(|a| a.secret);
        assert_eq!(key(b"s3cret\n"), Ok(b"s3cret".to_vec()));
        assert_eq!(key(b"s3cret\r\n"), Ok(b"s3cret".to_vec()));
        assert_eq!(key(b"s3cret"), Ok(b"s3cret".to_vec()));
        assert_eq!(key(b"s3cret\n\n"), Ok(b"s3cret\n".to_vec()));
        assert_eq!(key(b" s3cret \r"), Ok(b" s3cret \r".to_vec()));
        for empty in [&b""[..], b"\n", b"\r\n"] {
            assert_eq!(key(empty), Err(SecretError::Empty));
        }
        // The stripped key is the one tokens are checked with.
        let a = AuthConfig::from_file_bytes(b"0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(a
            .verify(&hs256(json!({"sub": "ann", "exp": NOW + 1})), NOW)
            .is_ok());
        assert!(!a.is_weak() && AuthConfig::new(b"short").is_weak());
        assert_eq!(format!("{a:?}"), "AuthConfig { secret: 32 bytes }");
    }

    #[test]
    fn a_client_reads_sub_without_the_secret() {
        let t = mint(
            Algorithm::HS256,
            b"the client does not know this",
            &json!({"sub": "ann", "exp": 1}),
        );
        assert_eq!(unverified_sub(&t), Ok("ann".into()));
        assert_eq!(
            unverified_sub(&hs256(json!({"exp": 1}))),
            Err(AuthError::MissingSub)
        );
        assert!(matches!(
            unverified_sub("a.b"),
            Err(AuthError::BadFormat(_))
        ));
        assert!(matches!(
            unverified_sub("a.!!.c"),
            Err(AuthError::BadFormat(_))
        ));
        assert!(matches!(
            unverified_sub(&format!("e30.{}.", b64(r#"{"sub":"a b"}"#))),
            Err(AuthError::BadSub(_))
        ));
    }
}
