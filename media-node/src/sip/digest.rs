//! HTTP digest authentication for SIP (RFC 2617, RFC 7616, RFC 3261 §22), MD5 only, for a
//! registrar that never holds a password: seats' credentials reach the node as HA1 hashes.
//!
//! Nonces are stateless: a nonce carries its issue time (wall-clock seconds) and a random salt,
//! authenticated with HMAC-MD5 under a key the nodes of a center share ([`NonceKey`], replicated
//! to the standby). The node therefore keeps no table of issued nonces (a flood of
//! unauthenticated REGISTERs costs no memory), a forged nonce is refused, and an expired one is
//! answered with a fresh challenge marked `stale=true` so the phone retries silently instead of
//! prompting for a password. Replay of a `qop=auth` response is refused by tracking
//! the highest nonce-count accepted per nonce ([`NonceCounts`]); only nonces that already passed
//! a full digest check are tracked, so that table is bounded by genuine registrations.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use md5::{Digest, Md5};
use rand::RngCore;

/// How long a nonce stays valid after it was issued. Phones refresh their registration well
/// inside this and simply retry on `stale=true`.
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Longest `Authorization` header value we look at; anything longer is refused unparsed.
const MAX_AUTHORIZATION_LEN: usize = 4096;

/// Salt bytes in a nonce: makes every challenge unique even within one second.
const NONCE_SALT_LEN: usize = 8;
/// Bytes of the HMAC kept in a nonce (the full MD5 output).
const NONCE_MAC_LEN: usize = 16;
/// Issue time (8 bytes) + salt + MAC, hex encoded.
const NONCE_HEX_LEN: usize = 2 * (8 + NONCE_SALT_LEN + NONCE_MAC_LEN);

/// `HA1 = MD5(username ":" realm ":" password)`, lower-case hex: the only form in which a seat's
/// secret is kept by the node.
pub fn ha1(username: &str, realm: &str, password: &str) -> String {
    // One definition for the operator (which hashes seat passwords into the NodeConfig) and
    // the node.
    switchboard_proto::node_config::digest_ha1(username, realm, password.as_bytes())
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    hex::encode(hasher.finalize())
}

/// HMAC-MD5 (RFC 2104). MD5 is broken for collisions, not as a MAC key-derivation; HMAC-MD5
/// remains sound for authenticating our own nonces and needs no extra dependency.
fn hmac_md5(key: &[u8; 64], message: &[&[u8]]) -> [u8; 16] {
    let mut inner_pad = [0x36u8; 64];
    let mut outer_pad = [0x5cu8; 64];
    for (i, k) in key.iter().enumerate() {
        inner_pad[i] ^= k;
        outer_pad[i] ^= k;
    }
    let mut inner = Md5::new();
    inner.update(inner_pad);
    for part in message {
        inner.update(part);
    }
    let inner_hash = inner.finalize();
    let mut outer = Md5::new();
    outer.update(outer_pad);
    outer.update(inner_hash);
    outer.finalize().into()
}

/// Constant-time comparison, so a wrong response does not leak how many leading characters of
/// the expected one it got right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why an `Authorization` header cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorizationError {
    #[error("the Authorization header is longer than {MAX_AUTHORIZATION_LEN} bytes")]
    TooLong,
    #[error("the authentication scheme is not Digest")]
    NotDigest,
    #[error("malformed Digest parameters: {0}")]
    Malformed(&'static str),
    #[error("the Digest parameter {0:?} is missing")]
    Missing(&'static str),
    #[error("unsupported algorithm {0:?} (only MD5)")]
    UnsupportedAlgorithm(String),
    #[error("unsupported qop {0:?} (only auth)")]
    UnsupportedQop(String),
}

/// The parameters of a `Digest` `Authorization` (or `Proxy-Authorization`) header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestCredentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// `Some("auth")` when the client used quality of protection; `None` for RFC 2069 style.
    pub qop: Option<String>,
    /// Nonce-count, present with `qop`.
    pub nc: Option<u32>,
    pub cnonce: Option<String>,
    pub opaque: Option<String>,
}

/// The parameters of a `Digest ...` header value (Authorization or a challenge), after the
/// length and scheme checks both share.
fn digest_params(value: &str) -> Result<Vec<(String, String)>, AuthorizationError> {
    if value.len() > MAX_AUTHORIZATION_LEN {
        return Err(AuthorizationError::TooLong);
    }
    let value = value.trim_start();
    let (scheme, rest) = match value.find(|c: char| c.is_ascii_whitespace()) {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Err(AuthorizationError::NotDigest);
    }
    parse_params(rest)
}

/// Parses an `Authorization` header value: `Digest name=value, name="quoted, value", ...`.
/// Parameter names are case-insensitive; quoted strings may contain commas and `\"` escapes.
/// Never panics, whatever the input.
pub fn parse_authorization(value: &str) -> Result<DigestCredentials, AuthorizationError> {
    let params = digest_params(value)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let required = |name: &'static str| get(name).ok_or(AuthorizationError::Missing(name));

    if let Some(algorithm) = get("algorithm")
        && !algorithm.eq_ignore_ascii_case("MD5")
    {
        return Err(AuthorizationError::UnsupportedAlgorithm(algorithm));
    }
    let qop = get("qop");
    let (nc, cnonce) = match &qop {
        None => (None, None),
        Some(q) if q.eq_ignore_ascii_case("auth") => {
            let nc_text = required("nc")?;
            // RFC 2617: nc is exactly 8 hex digits.
            if nc_text.len() != 8 {
                return Err(AuthorizationError::Malformed("nc is not 8 hex digits"));
            }
            let nc = u32::from_str_radix(&nc_text, 16)
                .map_err(|_| AuthorizationError::Malformed("nc is not 8 hex digits"))?;
            (Some(nc), Some(required("cnonce")?))
        }
        Some(other) => return Err(AuthorizationError::UnsupportedQop(other.clone())),
    };
    Ok(DigestCredentials {
        username: required("username")?,
        realm: required("realm")?,
        nonce: required("nonce")?,
        uri: required("uri")?,
        response: required("response")?,
        qop: qop.map(|q| q.to_ascii_lowercase()),
        nc,
        cnonce,
        opaque: get("opaque"),
    })
}

/// Splits `a=b, c="d, e"` into name/value pairs (values unquoted).
fn parse_params(input: &str) -> Result<Vec<(String, String)>, AuthorizationError> {
    let mut params = Vec::new();
    let mut chars = input.chars().peekable();
    loop {
        // Skip separators between parameters.
        while chars
            .peek()
            .is_some_and(|c| c.is_ascii_whitespace() || *c == ',')
        {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') || name.is_empty() {
            return Err(AuthorizationError::Malformed("expected name=value"));
        }
        while chars.peek().is_some_and(|c| c.is_ascii_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some(escaped) => value.push(escaped),
                        None => break,
                    },
                    '"' => {
                        closed = true;
                        break;
                    }
                    other => value.push(other),
                }
            }
            if !closed {
                return Err(AuthorizationError::Malformed("unterminated quoted string"));
            }
            // Only whitespace may follow a quoted value before the next comma.
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if !c.is_ascii_whitespace() {
                    return Err(AuthorizationError::Malformed("text after a quoted value"));
                }
                chars.next();
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
            value.truncate(value.trim_end().len());
        }
        params.push((name, value));
    }
    Ok(params)
}

/// The expected `response` for the given credentials, method and HA1 (RFC 2617 §3.2.2.1).
pub fn expected_response(credentials: &DigestCredentials, method: &str, ha1_hex: &str) -> String {
    let ha2 = md5_hex(&[method.as_bytes(), b":", credentials.uri.as_bytes()]);
    match (&credentials.qop, credentials.nc, &credentials.cnonce) {
        (Some(qop), Some(nc), Some(cnonce)) => {
            let nc = format!("{nc:08x}");
            md5_hex(&[
                ha1_hex.as_bytes(),
                b":",
                credentials.nonce.as_bytes(),
                b":",
                nc.as_bytes(),
                b":",
                cnonce.as_bytes(),
                b":",
                qop.as_bytes(),
                b":",
                ha2.as_bytes(),
            ])
        }
        _ => md5_hex(&[
            ha1_hex.as_bytes(),
            b":",
            credentials.nonce.as_bytes(),
            b":",
            ha2.as_bytes(),
        ]),
    }
}

/// Whether the client's `response` matches HA1 (compared in constant time, case-insensitively
/// as hex).
pub fn verify_response(credentials: &DigestCredentials, method: &str, ha1_hex: &str) -> bool {
    let expected = expected_response(credentials, method, ha1_hex);
    constant_time_eq(
        expected.as_bytes(),
        credentials.response.to_ascii_lowercase().as_bytes(),
    )
}

/// A UAC's answer to a `WWW-Authenticate` / `Proxy-Authenticate` challenge (RFC 2617 §3.2.2):
/// the header value for `Authorization` / `Proxy-Authorization`. `qop=auth` is used when the
/// challenge offers it (nonce-count 1, a fresh cnonce), RFC 2069 style otherwise. Only MD5.
pub fn answer_challenge(
    challenge: &str,
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> Result<String, AuthorizationError> {
    let params = digest_params(challenge)?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    if let Some(algorithm) = get("algorithm")
        && !algorithm.eq_ignore_ascii_case("MD5")
    {
        return Err(AuthorizationError::UnsupportedAlgorithm(algorithm));
    }
    let realm = get("realm").ok_or(AuthorizationError::Missing("realm"))?;
    let nonce = get("nonce").ok_or(AuthorizationError::Missing("nonce"))?;
    let offers_auth =
        get("qop").is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
    let (qop, nc, cnonce) = if offers_auth {
        (
            Some("auth".to_string()),
            Some(1),
            Some(format!("{:016x}", rand::random::<u64>())),
        )
    } else {
        (None, None, None)
    };
    let mut credentials = DigestCredentials {
        username: username.to_string(),
        realm,
        nonce,
        uri: uri.to_string(),
        response: String::new(),
        qop,
        nc,
        cnonce,
        opaque: get("opaque"),
    };
    let ha1_hex = ha1(username, &credentials.realm, password);
    credentials.response = expected_response(&credentials, method, &ha1_hex);
    let quote = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"");
    let mut value = format!(
        "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm=MD5",
        quote(&credentials.username),
        quote(&credentials.realm),
        quote(&credentials.nonce),
        quote(&credentials.uri),
        credentials.response
    );
    if let (Some(qop), Some(nc), Some(cnonce)) =
        (&credentials.qop, credentials.nc, &credentials.cnonce)
    {
        value.push_str(&format!(", qop={qop}, nc={nc:08x}, cnonce=\"{cnonce}\""));
    }
    if let Some(opaque) = &credentials.opaque {
        value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
    }
    Ok(value)
}

/// What a nonce presented by a client turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStatus {
    /// Issued by this process and still within its lifetime.
    Valid,
    /// Issued by this process but too old: challenge again with `stale=true`.
    Stale,
    /// Not issued by this process (forged, corrupted or from before a restart).
    Forged,
}

/// The key that authenticates nonces. The nodes of a center share one (a standby takes the
/// active's from the replication stream and uses it once it takes over), so that a phone
/// challenged by one node completes its authentication at the other: a caller challenged by
/// a node that then hands over or fails would otherwise be challenged again by the next one,
/// which many phones (and SIPp) take for a retransmission of the first challenge, and the
/// call is lost. Its `Debug` never shows the key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NonceKey(pub [u8; 64]);

impl NonceKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut key = [0u8; 64];
        rand::rng().fill_bytes(&mut key);
        Self(key)
    }

    /// The key as replicated bytes are read: exactly 64 bytes, else `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl std::fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// How far in the future a nonce's issue time may lie: another node of the center issued it
/// and its clock is a little ahead of ours.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(30);

/// The current key, and the one before it: nonces this node issued before it took the
/// center's key stay good until they expire.
struct NonceKeys {
    current: NonceKey,
    previous: Option<NonceKey>,
}

/// Issues and checks stateless nonces: `hex(issued ‖ salt ‖ HMAC-MD5(key, issued ‖ salt))`,
/// `issued` in seconds since the Unix epoch so that every node of a center reads the same age.
pub struct NonceIssuer {
    keys: parking_lot::RwLock<NonceKeys>,
    /// The wall-clock time of `epoch`, taken once: issue times and ages follow the monotonic
    /// clock from there (a wall-clock jump does not age or rejuvenate a nonce), and agree
    /// with another node's as far as the clocks agreed when each process started.
    epoch: Instant,
    epoch_unix_secs: u64,
    lifetime: Duration,
}

impl NonceIssuer {
    /// A new issuer with a random key.
    pub fn new(epoch: Instant, lifetime: Duration) -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // `epoch` may lie in the past: read the wall clock at `epoch`, not now.
        let unix = unix.saturating_sub(Instant::now().saturating_duration_since(epoch).as_secs());
        Self::with_key(NonceKey::random(), epoch, unix, lifetime)
    }

    /// An issuer with a given key whose `epoch` is `epoch_unix_secs` on the wall clock.
    pub fn with_key(
        key: NonceKey,
        epoch: Instant,
        epoch_unix_secs: u64,
        lifetime: Duration,
    ) -> Self {
        Self {
            keys: parking_lot::RwLock::new(NonceKeys {
                current: key,
                previous: None,
            }),
            epoch,
            epoch_unix_secs,
            lifetime,
        }
    }

    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The key new nonces are issued with (what the standby replicates).
    pub fn key(&self) -> NonceKey {
        self.keys.read().current
    }

    /// Issues new nonces with `key` from now on (the center's, taken over from the node that
    /// was active), still accepting those issued with the key used until now.
    pub fn adopt(&self, key: NonceKey) {
        let mut keys = self.keys.write();
        if keys.current != key {
            keys.previous = Some(keys.current);
            keys.current = key;
        }
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        self.epoch_unix_secs
            .saturating_add(now.saturating_duration_since(self.epoch).as_secs())
    }

    /// A fresh nonce issued at `now`.
    pub fn issue(&self, now: Instant) -> String {
        let issued_bytes = self.unix_secs(now).to_be_bytes();
        let mut salt = [0u8; NONCE_SALT_LEN];
        rand::rng().fill_bytes(&mut salt);
        let mac = hmac_md5(&self.keys.read().current.0, &[&issued_bytes, &salt]);
        let mut nonce = String::with_capacity(NONCE_HEX_LEN);
        for byte in issued_bytes.iter().chain(&salt).chain(&mac) {
            let _ = write!(nonce, "{byte:02x}");
        }
        nonce
    }

    /// Checks a nonce a client sent back at `now`.
    pub fn check(&self, nonce: &str, now: Instant) -> NonceStatus {
        if nonce.len() != NONCE_HEX_LEN {
            return NonceStatus::Forged;
        }
        let Ok(bytes) = hex::decode(nonce) else {
            return NonceStatus::Forged;
        };
        let (issued_bytes, rest) = bytes.split_at(8);
        let (salt, mac) = rest.split_at(NONCE_SALT_LEN);
        let authentic = {
            let keys = self.keys.read();
            std::iter::once(keys.current)
                .chain(keys.previous)
                .any(|key| constant_time_eq(&hmac_md5(&key.0, &[issued_bytes, salt]), mac))
        };
        if !authentic {
            return NonceStatus::Forged;
        }
        let mut issued = [0u8; 8];
        issued.copy_from_slice(issued_bytes);
        let issued = u64::from_be_bytes(issued);
        let now = self.unix_secs(now);
        if issued > now.saturating_add(MAX_CLOCK_SKEW.as_secs()) {
            // Further "in the future" than clocks disagree: not a time we ever issued at.
            return NonceStatus::Forged;
        }
        if Duration::from_secs(now.saturating_sub(issued)) > self.lifetime {
            NonceStatus::Stale
        } else {
            NonceStatus::Valid
        }
    }
}

/// The `WWW-Authenticate` header value for a challenge.
pub fn challenge(realm: &str, nonce: &str, stale: bool) -> String {
    let mut value = format!(
        "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"",
        realm.replace('\\', "\\\\").replace('"', "\\\"")
    );
    if stale {
        value.push_str(", stale=true");
    }
    value
}

/// Replay protection for `qop=auth`: the highest nonce-count accepted per nonce. A response is
/// accepted only with a nonce-count above every one accepted before for that nonce, so a
/// captured REGISTER cannot be replayed. Entries leave with their nonce's lifetime.
pub struct NonceCounts {
    seen: HashMap<String, (u32, Instant)>,
    max_entries: usize,
}

/// What [`NonceCounts::accept`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCountCheck {
    Fresh,
    Replayed,
    /// The table is full of live nonces: treat the nonce as stale so the client gets a new one
    /// (only reachable with more concurrent genuine registrations than the bound).
    Full,
}

impl NonceCounts {
    pub fn new(max_entries: usize) -> Self {
        Self {
            seen: HashMap::new(),
            max_entries,
        }
    }

    /// Records `nc` for `nonce` if it is higher than any before. `expires` is when the nonce
    /// itself stops being valid (after that the nonce is refused as stale anyway).
    pub fn accept(
        &mut self,
        nonce: &str,
        nc: u32,
        expires: Instant,
        now: Instant,
    ) -> NonceCountCheck {
        if let Some((highest, _)) = self.seen.get_mut(nonce) {
            if nc <= *highest {
                return NonceCountCheck::Replayed;
            }
            *highest = nc;
            return NonceCountCheck::Fresh;
        }
        if self.seen.len() >= self.max_entries {
            self.sweep(now);
            if self.seen.len() >= self.max_entries {
                return NonceCountCheck::Full;
            }
        }
        self.seen.insert(nonce.to_string(), (nc, expires));
        NonceCountCheck::Fresh
    }

    /// Forgets nonces whose lifetime is over.
    pub fn sweep(&mut self, now: Instant) {
        self.seen.retain(|_, (_, expires)| *expires > now);
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 2617 §3.5: Mufasa / "Circle Of Life" / testrealm@host.com.
    const RFC_AUTHORIZATION: &str = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;

    fn rfc_ha1() -> String {
        ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    }

    #[test]
    fn rfc2617_example_verifies_with_qop_auth() {
        let creds = parse_authorization(RFC_AUTHORIZATION).unwrap();
        assert_eq!(creds.username, "Mufasa");
        assert_eq!(creds.realm, "testrealm@host.com");
        assert_eq!(creds.uri, "/dir/index.html");
        assert_eq!(creds.qop.as_deref(), Some("auth"));
        assert_eq!(creds.nc, Some(1));
        assert_eq!(creds.cnonce.as_deref(), Some("0a4f113b"));
        assert_eq!(
            creds.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        assert_eq!(
            expected_response(&creds, "GET", &rfc_ha1()),
            "6629fae49393a05397450978507c4ef1"
        );
        assert!(verify_response(&creds, "GET", &rfc_ha1()));
    }

    #[test]
    fn wrong_password_or_method_does_not_verify() {
        let creds = parse_authorization(RFC_AUTHORIZATION).unwrap();
        let wrong = ha1("Mufasa", "testrealm@host.com", "Circle of Life");
        assert!(!verify_response(&creds, "GET", &wrong));
        assert!(!verify_response(&creds, "POST", &rfc_ha1()));
    }

    #[test]
    fn response_compared_case_insensitively() {
        let mut creds = parse_authorization(RFC_AUTHORIZATION).unwrap();
        creds.response = creds.response.to_ascii_uppercase();
        assert!(verify_response(&creds, "GET", &rfc_ha1()));
    }

    #[test]
    fn verifies_without_qop() {
        // RFC 2069 compatibility: response = MD5(HA1:nonce:HA2).
        let ha1 = rfc_ha1();
        let ha2 = md5_hex(&[b"REGISTER:sip:localhost"]);
        let response = md5_hex(&[ha1.as_bytes(), b":abc:", ha2.as_bytes()]);
        let header = format!(
            r#"digest USERNAME="Mufasa", Realm="testrealm@host.com", nonce="abc", uri="sip:localhost", response="{response}""#
        );
        let creds = parse_authorization(&header).unwrap();
        assert_eq!(creds.qop, None);
        assert_eq!(creds.nc, None);
        assert!(verify_response(&creds, "REGISTER", &ha1));
        assert!(!verify_response(&creds, "INVITE", &ha1));
    }

    #[test]
    fn ha1_matches_known_value() {
        // md5("Mufasa:testrealm@host.com:Circle Of Life")
        assert_eq!(rfc_ha1(), "939e7578ed9e3c518a452acee763bce9");
    }

    #[test]
    fn quoted_values_keep_commas_and_escapes() {
        let creds = parse_authorization(
            r#"Digest username="a,b", realm="r \"x\"", nonce="n", uri="sip:x,y", response="0""#,
        )
        .unwrap();
        assert_eq!(creds.username, "a,b");
        assert_eq!(creds.realm, r#"r "x""#);
        assert_eq!(creds.uri, "sip:x,y");
    }

    #[test]
    fn malformed_headers_are_refused() {
        use AuthorizationError::*;
        let cases: &[(&str, AuthorizationError)] = &[
            ("Basic QWxhZGRpbjpvcGVu", NotDigest),
            ("", NotDigest),
            (
                r#"Digest username="a"#,
                Malformed("unterminated quoted string"),
            ),
            ("Digest =x", Malformed("expected name=value")),
            ("Digest username", Malformed("expected name=value")),
            (
                r#"Digest username="a"x, realm=r"#,
                Malformed("text after a quoted value"),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u"#,
                Missing("response"),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, algorithm=SHA-256"#,
                UnsupportedAlgorithm("SHA-256".into()),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, qop=auth-int, nc=00000001, cnonce=c"#,
                UnsupportedQop("auth-int".into()),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, qop=auth, cnonce=c"#,
                Missing("nc"),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, qop=auth, nc=1, cnonce=c"#,
                Malformed("nc is not 8 hex digits"),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, qop=auth, nc=0000000g, cnonce=c"#,
                Malformed("nc is not 8 hex digits"),
            ),
            (
                r#"Digest username=a, realm=r, nonce=n, uri=u, response=x, qop=auth, nc=00000001"#,
                Missing("cnonce"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse_authorization(input).as_ref(),
                Err(expected),
                "{input}"
            );
        }
        let long = format!("Digest username=\"{}\"", "a".repeat(MAX_AUTHORIZATION_LEN));
        assert_eq!(parse_authorization(&long), Err(TooLong));
    }

    /// The wall clock at `epoch` in these tests.
    const EPOCH_UNIX: u64 = 1_800_000_000;

    fn issuer(epoch: Instant) -> NonceIssuer {
        NonceIssuer::with_key(
            NonceKey([7u8; 64]),
            epoch,
            EPOCH_UNIX,
            Duration::from_secs(300),
        )
    }

    #[test]
    fn nonce_is_valid_until_its_lifetime_then_stale() {
        let epoch = Instant::now();
        let issuer = issuer(epoch);
        let issued_at = epoch + Duration::from_secs(1000);
        let nonce = issuer.issue(issued_at);
        assert_eq!(nonce.len(), NONCE_HEX_LEN);
        assert_eq!(issuer.check(&nonce, issued_at), NonceStatus::Valid);
        assert_eq!(
            issuer.check(&nonce, issued_at + Duration::from_secs(300)),
            NonceStatus::Valid
        );
        assert_eq!(
            issuer.check(&nonce, issued_at + Duration::from_secs(301)),
            NonceStatus::Stale
        );
        // Before its issue time: a clock we never had.
        assert_eq!(
            issuer.check(&nonce, epoch + Duration::from_secs(10)),
            NonceStatus::Forged
        );
    }

    #[test]
    fn a_node_that_took_the_centers_key_accepts_the_other_nodes_nonces() {
        // Two processes started 40 s apart (each anchors its monotonic clock to the wall
        // clock), the second taking the first one's key from the replication stream.
        let first_epoch = Instant::now();
        let first = issuer(first_epoch);
        let second_epoch = first_epoch + Duration::from_secs(40);
        let second = NonceIssuer::with_key(
            NonceKey([9u8; 64]),
            second_epoch,
            EPOCH_UNIX + 40,
            Duration::from_secs(300),
        );
        let issued_at = first_epoch + Duration::from_secs(100);
        let nonce = first.issue(issued_at);
        assert_eq!(second.check(&nonce, issued_at), NonceStatus::Forged);
        let own = second.issue(issued_at);
        second.adopt(first.key());
        assert_eq!(second.key(), first.key());
        assert_eq!(second.check(&nonce, issued_at), NonceStatus::Valid);
        // The age is the same on both: stale at both after the lifetime.
        let later = issued_at + Duration::from_secs(301);
        assert_eq!(first.check(&nonce, later), NonceStatus::Stale);
        assert_eq!(second.check(&nonce, later), NonceStatus::Stale);
        // What it issued with its own key until then stays good; new nonces are the center's.
        assert_eq!(second.check(&own, issued_at), NonceStatus::Valid);
        assert_eq!(
            first.check(&second.issue(issued_at), issued_at),
            NonceStatus::Valid
        );
        // Taking the same key again forgets nothing.
        second.adopt(first.key());
        assert_eq!(second.check(&own, issued_at), NonceStatus::Valid);
    }

    #[test]
    fn a_clock_a_little_ahead_is_tolerated_a_time_far_ahead_is_not() {
        let epoch = Instant::now();
        let issuer = issuer(epoch);
        let ahead = |secs: u64| {
            NonceIssuer::with_key(
                NonceKey([7u8; 64]),
                epoch,
                EPOCH_UNIX + secs,
                Duration::from_secs(300),
            )
            .issue(epoch)
        };
        assert_eq!(issuer.check(&ahead(30), epoch), NonceStatus::Valid);
        assert_eq!(issuer.check(&ahead(31), epoch), NonceStatus::Forged);
    }

    #[test]
    fn a_nonce_key_is_never_shown() {
        let key = NonceKey([0xab; 64]);
        assert_eq!(format!("{key:?}"), "NonceKey(..)");
        assert_eq!(NonceKey::from_slice(&[0xab; 64]), Some(key));
        assert_eq!(NonceKey::from_slice(&[0xab; 63]), None);
        assert_eq!(NonceKey::from_slice(&[]), None);
    }

    #[test]
    fn nonces_are_unique() {
        let epoch = Instant::now();
        let issuer = issuer(epoch);
        assert_ne!(issuer.issue(epoch), issuer.issue(epoch));
    }

    #[test]
    fn forged_or_tampered_nonces_are_refused() {
        let epoch = Instant::now();
        let issuer = issuer(epoch);
        let nonce = issuer.issue(epoch);
        // Another process (another secret) issued it.
        let other = NonceIssuer::with_key(
            NonceKey([8u8; 64]),
            epoch,
            EPOCH_UNIX,
            Duration::from_secs(300),
        );
        assert_eq!(other.check(&nonce, epoch), NonceStatus::Forged);
        // Moving the issue time forward to extend its life breaks the MAC.
        let mut tampered = nonce.clone().into_bytes();
        tampered[15] = if tampered[15] == b'1' { b'2' } else { b'1' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(issuer.check(&tampered, epoch), NonceStatus::Forged);
        for junk in [
            "",
            "zz",
            &"g".repeat(NONCE_HEX_LEN),
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        ] {
            assert_eq!(issuer.check(junk, epoch), NonceStatus::Forged, "{junk}");
        }
    }

    #[test]
    fn answer_challenge_verifies_against_our_own_check() {
        let header = challenge("carrier.example", "n0nce", false);
        let answer = answer_challenge(
            &header,
            "acct",
            "s3cret",
            "INVITE",
            "sip:4930@carrier.example",
        )
        .expect("answers");
        let credentials = parse_authorization(&answer).expect("parses back");
        assert_eq!(credentials.username, "acct");
        assert_eq!(credentials.nc, Some(1));
        assert!(verify_response(
            &credentials,
            "INVITE",
            &ha1("acct", "carrier.example", "s3cret")
        ));
        // RFC 2069 style without qop.
        let answer = answer_challenge(
            "Digest realm=\"r\", nonce=\"x\"",
            "a",
            "p",
            "INVITE",
            "sip:1@r",
        )
        .expect("answers");
        let credentials = parse_authorization(&answer).expect("parses back");
        assert_eq!(credentials.qop, None);
        assert!(verify_response(&credentials, "INVITE", &ha1("a", "r", "p")));
        assert!(answer_challenge("Basic realm=\"r\"", "a", "p", "INVITE", "sip:1@r").is_err());
        assert!(answer_challenge("Digest realm=\"r\"", "a", "p", "INVITE", "sip:1@r").is_err());
    }

    #[test]
    fn challenge_header_is_well_formed() {
        let value = challenge("local\"host", "abc", true);
        assert_eq!(
            value,
            r#"Digest realm="local\"host", nonce="abc", algorithm=MD5, qop="auth", stale=true"#
        );
        assert!(!challenge("r", "n", false).contains("stale"));
    }

    #[test]
    fn nonce_count_replay_is_refused() {
        let now = Instant::now();
        let expires = now + Duration::from_secs(300);
        let mut counts = NonceCounts::new(10);
        assert_eq!(counts.accept("n1", 1, expires, now), NonceCountCheck::Fresh);
        assert_eq!(
            counts.accept("n1", 1, expires, now),
            NonceCountCheck::Replayed
        );
        assert_eq!(counts.accept("n1", 2, expires, now), NonceCountCheck::Fresh);
        assert_eq!(
            counts.accept("n1", 1, expires, now),
            NonceCountCheck::Replayed
        );
        // Another nonce has its own count.
        assert_eq!(counts.accept("n2", 1, expires, now), NonceCountCheck::Fresh);
        assert_eq!(counts.len(), 2);
        counts.sweep(expires);
        assert!(counts.is_empty());
    }

    #[test]
    fn nonce_count_table_is_bounded() {
        let now = Instant::now();
        let mut counts = NonceCounts::new(2);
        let later = now + Duration::from_secs(10);
        assert_eq!(counts.accept("a", 1, later, now), NonceCountCheck::Fresh);
        assert_eq!(counts.accept("b", 1, later, now), NonceCountCheck::Fresh);
        assert_eq!(counts.accept("c", 1, later, now), NonceCountCheck::Full);
        // Once the old nonces expire there is room again.
        assert_eq!(
            counts.accept("c", 1, later + Duration::from_secs(20), later),
            NonceCountCheck::Fresh
        );
    }

    proptest! {
        #[test]
        fn parse_authorization_never_panics(input in ".*") {
            let _ = parse_authorization(&input);
        }

        #[test]
        fn parse_digest_params_never_panics(input in r#"Digest [a-z=", \\]{0,200}"#) {
            let _ = parse_authorization(&input);
        }

        #[test]
        fn nonce_check_never_panics(input in ".*") {
            let epoch = Instant::now();
            let _ = issuer(epoch).check(&input, epoch);
        }

        #[test]
        fn quoted_values_round_trip(user in "[ -~]{0,40}") {
            let quoted = user.replace('\\', "\\\\").replace('"', "\\\"");
            let header = format!(
                r#"Digest username="{quoted}", realm="r", nonce="n", uri="u", response="x""#
            );
            let creds = parse_authorization(&header).unwrap();
            prop_assert_eq!(creds.username, user);
        }
    }
}
