//! SIP messages as the node handles them: parsed with `rsip`, then reduced to a request view with
//! canonical header names, plus the small header grammars the registrar needs (Via, Contact,
//! name-addr, CSeq) and response construction (RFC 3261 §8.2.6, RFC 3581).
//!
//! Header values are kept as text and copied verbatim into responses: a response must echo
//! Via, From, To, Call-ID and CSeq exactly, and re-serialising them through a typed model risks
//! changing what the phone matches on.

use std::fmt;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use rand::RngCore;

use super::registrar::{ContactUpdate, RequestedContact};

/// The transport a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// The "magic cookie" that marks an RFC 3261 branch (§8.1.1.7).
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

/// A SIP request with header names in canonical form and values as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipRequest {
    pub method: rsip::Method,
    pub uri: String,
    /// `(canonical name, value)` in arrival order; compact forms expanded (`v` → `Via`).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Request(SipRequest),
    /// A response, for one of the node's client transactions (B2BUA legs).
    Response(SipResponse),
}

/// A SIP response with header names in canonical form and values as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipResponse {
    pub status: u16,
    /// `(canonical name, value)` in arrival order; compact forms expanded.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Values of the header `name` among `headers` (case-insensitive), in order; shared by
/// requests and responses.
fn header_values<'a, 'n>(
    headers: &'a [(String, String)],
    name: &'n str,
) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The first element of a Via header value.
fn top_via(value: &str) -> Option<Via> {
    Via::parse(split_list(value).into_iter().next()?)
}

impl SipResponse {
    /// All values of a header (case-insensitive name), in order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        header_values(&self.headers, name)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The top Via element (ours, for a response to a request the node sent).
    pub fn top_via(&self) -> Option<Via> {
        top_via(self.header("Via")?)
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        parse_cseq(self.header("CSeq")?)
    }

    /// The tag of the To header (the remote party's dialog tag).
    pub fn to_tag(&self) -> Option<String> {
        self.header("To")
            .and_then(NameAddr::parse)
            .and_then(|to| to.tag().map(str::to_string))
    }
}

fn parse_cseq(value: &str) -> Option<(u32, &str)> {
    let mut parts = value.split_ascii_whitespace();
    let number = parts.next()?.parse().ok()?;
    let method = parts.next()?;
    if parts.next().is_some() {
        return None;
    }
    Some((number, method))
}

/// Why a message could not be parsed at all.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("not a SIP message: {0}")]
    Syntax(String),
}

/// Parses one complete message (a datagram, or one framed message from a stream).
pub fn parse(bytes: &[u8]) -> Result<Inbound, ParseError> {
    let message =
        rsip::SipMessage::try_from(bytes).map_err(|e| ParseError::Syntax(e.to_string()))?;
    match message {
        rsip::SipMessage::Response(response) => Ok(Inbound::Response(SipResponse {
            status: response.status_code.code(),
            headers: response.headers.iter().map(header_name_value).collect(),
            body: response.body,
        })),
        rsip::SipMessage::Request(request) => Ok(Inbound::Request(SipRequest {
            method: request.method,
            uri: request.uri.to_string(),
            headers: request.headers.iter().map(header_name_value).collect(),
            body: request.body,
        })),
    }
}

fn header_name_value(header: &rsip::Header) -> (String, String) {
    if let rsip::Header::Other(name, value) = header {
        return (canonical_name(name), value.trim().to_string());
    }
    // Every typed rsip header displays as "Canonical-Name: value".
    let text = header.to_string();
    match text.split_once(':') {
        Some((name, value)) => (name.trim().to_string(), value.trim().to_string()),
        None => (text, String::new()),
    }
}

/// Expands compact header forms (RFC 3261 §7.3.3) and fixes the case of the ones we look up.
fn canonical_name(name: &str) -> String {
    let name = name.trim();
    let known = [
        ("v", "Via"),
        ("f", "From"),
        ("t", "To"),
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("e", "Content-Encoding"),
        ("k", "Supported"),
        ("s", "Subject"),
    ];
    known
        .iter()
        .find(|(compact, _)| name.eq_ignore_ascii_case(compact))
        .map(|(_, full)| (*full).to_string())
        .unwrap_or_else(|| name.to_string())
}

impl SipRequest {
    /// All values of a header (case-insensitive name), in order.
    pub fn header_values<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a str> + use<'a, 'n> {
        header_values(&self.headers, name)
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).next()
    }

    /// The first element of the first Via header (the hop that sent this request to us).
    pub fn top_via(&self) -> Option<Via> {
        top_via(self.header("Via")?)
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        parse_cseq(self.header("CSeq")?)
    }

    /// Names of missing or malformed mandatory headers (RFC 3261 §8.1.1), empty when complete.
    pub fn missing_mandatory_headers(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if self.top_via().is_none() {
            missing.push("Via");
        }
        if self.header("From").and_then(NameAddr::parse).is_none() {
            missing.push("From");
        }
        if self.header("To").and_then(NameAddr::parse).is_none() {
            missing.push("To");
        }
        if self.header("Call-ID").is_none_or(str::is_empty) {
            missing.push("Call-ID");
        }
        match self.cseq() {
            Some((_, method)) if method.eq_ignore_ascii_case(&self.method.to_string()) => {}
            _ => missing.push("CSeq"),
        }
        missing
    }
}

/// Splits a comma-separated header value, ignoring commas inside quotes and angle brackets.
pub fn split_list(value: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut in_quotes = false;
    let mut escaped = false;
    let mut angle = false;
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '<' if !in_quotes => angle = true,
            '>' if !in_quotes => angle = false,
            ',' if !in_quotes && !angle => {
                items.push(value[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(value[start..].trim());
    items.retain(|s| !s.is_empty());
    items
}

/// One Via element: `SIP/2.0/UDP host:port;branch=...;rport`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// The text as received, for echoing.
    pub raw: String,
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    /// `(name, value)`; `rport` without value has `None`.
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(text: &str) -> Option<Via> {
        let text = text.trim();
        let (protocol, rest) = text.split_once(|c: char| c.is_ascii_whitespace())?;
        let mut protocol_parts = protocol.split('/');
        let (name, version, transport) = (
            protocol_parts.next()?,
            protocol_parts.next()?,
            protocol_parts.next()?,
        );
        if !name.trim().eq_ignore_ascii_case("SIP")
            || version.trim() != "2.0"
            || transport.trim().is_empty()
            || protocol_parts.next().is_some()
        {
            return None;
        }
        let mut parts = rest.trim().split(';');
        let sent_by = parts.next()?.trim();
        let (host, port) = split_host_port(sent_by)?;
        let params = parts
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                None => (p.trim().to_string(), None),
            })
            .filter(|(n, _)| !n.is_empty())
            .collect();
        Some(Via {
            raw: text.to_string(),
            transport: transport.trim().to_ascii_uppercase(),
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    /// `sent-by` as text (host and optional port).
    pub fn sent_by(&self) -> String {
        match self.port {
            Some(port) if self.host.contains(':') => format!("[{}]:{port}", self.host),
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    /// The Via to echo in a response: `received` added when the sent-by host is not the source
    /// address, and `rport` filled in (RFC 3581: with `rport`, `received` is always added).
    pub fn with_received(&self, source: SocketAddr) -> String {
        let wants_rport = self.param("rport").is_some();
        let host_is_source = self
            .host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip == source.ip());
        let mut out = self.raw.clone();
        if wants_rport {
            // Rewrite only the parameter list; keep protocol and sent-by exactly as sent.
            let head = self.raw.split(';').next().unwrap_or_default().trim_end();
            out = head.to_string();
            for (name, value) in &self.params {
                if name.eq_ignore_ascii_case("rport") {
                    let _ = write!(out, ";rport={}", source.port());
                } else if name.eq_ignore_ascii_case("received") {
                    // Replaced below with what we actually saw.
                } else {
                    match value {
                        Some(v) => {
                            let _ = write!(out, ";{name}={v}");
                        }
                        None => {
                            let _ = write!(out, ";{name}");
                        }
                    }
                }
            }
            let _ = write!(out, ";received={}", source.ip());
        } else if !host_is_source && self.param("received").is_none() {
            let _ = write!(out, ";received={}", source.ip());
        }
        out
    }

    /// Where a UDP response goes (RFC 3261 §18.2.2, RFC 3581 §4): the source address when the
    /// client asked for `rport`, otherwise the source IP at the sent-by port (5060 by default).
    pub fn response_destination(&self, source: SocketAddr) -> SocketAddr {
        if self.param("rport").is_some() {
            source
        } else {
            SocketAddr::new(source.ip(), self.port.unwrap_or(5060))
        }
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    if text.is_empty() {
        return None;
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_string(), port));
    }
    match text.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_string(), Some(port.parse().ok()?)))
        }
        // A bare IPv6 address without brackets: no port.
        Some(_) => Some((text.to_string(), None)),
        None => Some((text.to_string(), None)),
    }
}

/// A `name-addr` or `addr-spec` with header parameters (From, To, Contact).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub uri: String,
    /// `(name, value)` of the header parameters (after the URI).
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(text: &str) -> Option<NameAddr> {
        let text = text.trim();
        let (uri, params_text) = if let Some(open) = find_unquoted(text, '<') {
            let after = &text[open + 1..];
            let close = after.find('>')?;
            (&after[..close], &after[close + 1..])
        } else {
            // addr-spec: parameters after the URI belong to the header (RFC 3261 §20).
            match text.find(';') {
                Some(i) => (&text[..i], &text[i..]),
                None => (text, ""),
            }
        };
        let uri = uri.trim();
        // A URI needs a scheme ("sip:", "sips:", "tel:").
        let (scheme, rest) = uri.split_once(':')?;
        if scheme.is_empty()
            || rest.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return None;
        }
        let params = params_text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n.trim().to_string(), Some(v.trim().to_string())),
                None => (p.to_string(), None),
            })
            .collect();
        Some(NameAddr {
            uri: uri.to_string(),
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    pub fn tag(&self) -> Option<&str> {
        self.param("tag").flatten()
    }

    /// The user part of a `sip:`/`sips:` URI (`1001` in `sip:1001@host;transport=tcp`).
    pub fn user(&self) -> Option<&str> {
        let (scheme, rest) = self.uri.split_once(':')?;
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return None;
        }
        let (userinfo, _) = rest.split_once('@')?;
        // Drop a password (`user:password@host`), never used but legal.
        let user = userinfo.split(':').next().unwrap_or_default();
        (!user.is_empty()).then_some(user)
    }
}

/// The host and port of a `sip:`/`sips:` URI (`sip:2001@10.0.0.7:5072;transport=udp` gives
/// `10.0.0.7` and `5072`); `None` for another scheme or no host.
pub fn uri_host_port(uri: &str) -> Option<(String, Option<u16>)> {
    let (scheme, rest) = uri.trim().split_once(':')?;
    if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
        return None;
    }
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let end = rest.find([';', '?', '>']).unwrap_or(rest.len());
    split_host_port(&rest[..end])
}

/// Where requests to a user agent go that sent us a request from `source` with `contact` as
/// its Contact URI. The Contact's address when it names the very host the request came from:
/// the agent is not behind NAT and listens on the Contact's port (5060 by default); a
/// different source port is a translation on the path that holds only towards the node that
/// saw it (kube-proxy remaps a phone's port when its flow through the SIP Service clashes
/// with a node's own flow to that phone), so a node taking the dialog over must not use it.
/// Otherwise the source (the agent's public address behind NAT, RFC 3581-style).
pub fn request_destination(contact: &str, source: SocketAddr) -> SocketAddr {
    match uri_host_port(contact) {
        Some((host, port)) if host.parse::<IpAddr>().ok() == Some(source.ip()) => {
            SocketAddr::new(source.ip(), port.unwrap_or(5060))
        }
        _ => source,
    }
}

fn find_unquoted(text: &str, needle: char) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
        } else if in_quotes && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_quotes = !in_quotes;
        } else if c == needle && !in_quotes {
            return Some(i);
        }
    }
    None
}

/// Why the Contact or Expires headers of a REGISTER are unusable (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("malformed Contact {0:?}")]
    Malformed(String),
    #[error("Contact: * together with other contacts")]
    WildcardWithOthers,
    #[error("malformed expires value {0:?}")]
    Expires(String),
}

/// Reads an expiry in seconds; values beyond `u32` are clamped (the registrar shortens them to
/// its maximum anyway).
pub fn parse_expires(text: &str) -> Result<u32, ContactError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ContactError::Expires(text.to_string()));
    }
    Ok(text
        .parse::<u64>()
        .map_or(u32::MAX, |v| u32::try_from(v).unwrap_or(u32::MAX)))
}

/// Reads the Contact headers of a REGISTER.
pub fn parse_contacts<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> Result<ContactUpdate, ContactError> {
    let mut contacts = Vec::new();
    let mut wildcard = false;
    let mut any = false;
    for value in values {
        for item in split_list(value) {
            any = true;
            if item == "*" {
                wildcard = true;
                continue;
            }
            let addr =
                NameAddr::parse(item).ok_or_else(|| ContactError::Malformed(item.to_string()))?;
            let expires = match addr.param("expires") {
                None => None,
                Some(None) => return Err(ContactError::Expires(String::new())),
                Some(Some(v)) => Some(parse_expires(v)?),
            };
            contacts.push(RequestedContact {
                uri: addr.uri,
                expires,
            });
        }
    }
    match (any, wildcard, contacts.is_empty()) {
        (false, _, _) => Ok(ContactUpdate::Query),
        (true, true, true) => Ok(ContactUpdate::RemoveAll),
        (true, true, false) => Err(ContactError::WildcardWithOthers),
        (true, false, _) => Ok(ContactUpdate::Contacts(contacts)),
    }
}

/// A random token for To tags.
pub fn random_tag() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Builds a response to `request` (RFC 3261 §8.2.6.2): Via (top one with `received`/`rport`),
/// From, To (with `to_tag` added when it has none), Call-ID and CSeq copied; then `extra`
/// headers, `Server` and `Content-Length`.
pub fn build_response(
    request: &SipRequest,
    status: u16,
    reason: &str,
    source: SocketAddr,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
) -> Vec<u8> {
    // Only final responses get the tag here: the registrar's 100s carry none.
    let tag = to_tag.filter(|_| status >= 200);
    build_response_with_body(request, status, reason, source, tag, extra, None)
}

/// As [`build_response`], for the B2BUA: `to_tag` is added to any response (a 180 establishes
/// an early dialog and must carry it), and `body` is `(Content-Type, bytes)`.
pub fn build_response_with_body(
    request: &SipRequest,
    status: u16,
    reason: &str,
    source: SocketAddr,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
    body: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    let mut first_via = true;
    for value in request.header_values("Via") {
        if first_via {
            first_via = false;
            let mut echoed: Vec<String> =
                split_list(value).into_iter().map(str::to_string).collect();
            if let Some(top) = echoed.first_mut()
                && let Some(via) = Via::parse(top)
            {
                *top = via.with_received(source);
            }
            let _ = write!(out, "Via: {}\r\n", echoed.join(", "));
        } else {
            let _ = write!(out, "Via: {value}\r\n");
        }
    }
    if let Some(from) = request.header("From") {
        let _ = write!(out, "From: {from}\r\n");
    }
    if let Some(to) = request.header("To") {
        let has_tag = NameAddr::parse(to).is_some_and(|a| a.tag().is_some());
        match to_tag {
            Some(tag) if !has_tag => {
                let _ = write!(out, "To: {to};tag={tag}\r\n");
            }
            _ => {
                let _ = write!(out, "To: {to}\r\n");
            }
        }
    }
    if let Some(call_id) = request.header("Call-ID") {
        let _ = write!(out, "Call-ID: {call_id}\r\n");
    }
    if let Some(cseq) = request.header("CSeq") {
        let _ = write!(out, "CSeq: {cseq}\r\n");
    }
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(
        out,
        "Server: Switchboard media-node {}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    let mut bytes = match body {
        Some((content_type, body)) => {
            let _ = write!(
                out,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut bytes = out.into_bytes();
            bytes.extend_from_slice(body);
            bytes
        }
        None => {
            out.push_str("Content-Length: 0\r\n\r\n");
            out.into_bytes()
        }
    };
    bytes.shrink_to_fit();
    bytes
}

/// The standard reason phrase for the codes the node sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        420 => "Bad Extension",
        423 => "Interval Too Brief",
        408 => "Request Timeout",
        410 => "Gone",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        502 => "Bad Gateway",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        504 => "Server Time-out",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A `Content-Length` that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Content-Length {0:?} is not a number")]
pub struct BadContentLength(pub String);

/// Where a `Content-Length` header says the message ends, for framing streams and trimming
/// datagrams: the value of the first `Content-Length` (or `l`) header in `head` (the bytes up to
/// the blank line). `Ok(None)` when there is none; `Err` when it is not a number.
pub fn content_length(head: &[u8]) -> Result<Option<usize>, BadContentLength> {
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
            let value = String::from_utf8_lossy(&line[colon + 1..]);
            return value
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| BadContentLength(value.trim().to_string()));
        }
    }
    Ok(None)
}

/// Position just after the blank line that ends the headers, if present.
pub fn end_of_headers(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REGISTER: &str = "REGISTER sip:localhost SIP/2.0\r\n\
        v: SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK776asdhds;rport, SIP/2.0/UDP proxy.example:5060;branch=z9hG4bKold\r\n\
        Max-Forwards: 70\r\n\
        To: \"Agent, One\" <sip:1001@localhost>\r\n\
        From: <sip:1001@localhost>;tag=1928301774\r\n\
        i: a84b4c76e66710\r\n\
        CSeq: 1 REGISTER\r\n\
        m: <sip:1001@10.0.0.5:5070>;expires=120, sip:1001@10.0.0.6;expires=60\r\n\
        Content-Length: 0\r\n\r\n";

    fn request(text: &str) -> SipRequest {
        match parse(text.as_bytes()).unwrap() {
            Inbound::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_request_with_compact_headers() {
        let r = request(REGISTER);
        assert_eq!(r.method, rsip::Method::Register);
        assert_eq!(r.header("Call-ID"), Some("a84b4c76e66710"));
        assert_eq!(r.cseq(), Some((1, "REGISTER")));
        assert!(r.missing_mandatory_headers().is_empty());
        let via = r.top_via().unwrap();
        assert_eq!(via.host, "10.0.0.5");
        assert_eq!(via.port, Some(5070));
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(via.transport, "UDP");
        let to = NameAddr::parse(r.header("To").unwrap()).unwrap();
        assert_eq!(to.user(), Some("1001"));
        assert_eq!(to.tag(), None);
    }

    #[test]
    fn parses_contacts() {
        let r = request(REGISTER);
        let update = parse_contacts(r.header_values("Contact")).unwrap();
        assert_eq!(
            update,
            ContactUpdate::Contacts(vec![
                RequestedContact {
                    uri: "sip:1001@10.0.0.5:5070".into(),
                    expires: Some(120)
                },
                RequestedContact {
                    uri: "sip:1001@10.0.0.6".into(),
                    expires: Some(60)
                },
            ])
        );
        assert_eq!(parse_contacts(["*"]).unwrap(), ContactUpdate::RemoveAll);
        assert_eq!(parse_contacts([]).unwrap(), ContactUpdate::Query);
        assert_eq!(
            parse_contacts(["*, <sip:a@b>"]),
            Err(ContactError::WildcardWithOthers)
        );
        assert_eq!(
            parse_contacts(["<sip:a@b>;expires=soon"]),
            Err(ContactError::Expires("soon".into()))
        );
        assert!(parse_contacts(["no-scheme"]).is_err());
        assert!(parse_contacts(["<sip:a@b"]).is_err());
        assert_eq!(
            parse_contacts(["\"Desk, 2\" <sip:a@b;transport=tcp>;expires=99999999999"]).unwrap(),
            ContactUpdate::Contacts(vec![RequestedContact {
                uri: "sip:a@b;transport=tcp".into(),
                expires: Some(u32::MAX)
            }])
        );
    }

    #[test]
    fn response_echoes_headers_and_fills_rport() {
        let r = request(REGISTER);
        let source: SocketAddr = "203.0.113.9:40000".parse().unwrap();
        let bytes = build_response(
            &r,
            200,
            "OK",
            source,
            Some("abc"),
            &[("Expires", "60".into())],
        );
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("SIP/2.0 200 OK\r\n"), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bK776asdhds;rport=40000;received=203.0.113.9, SIP/2.0/UDP proxy.example:5060;branch=z9hG4bKold\r\n"),
            "{text}"
        );
        assert!(text.contains("To: \"Agent, One\" <sip:1001@localhost>;tag=abc\r\n"));
        assert!(text.contains("From: <sip:1001@localhost>;tag=1928301774\r\n"));
        assert!(text.contains("Call-ID: a84b4c76e66710\r\n"));
        assert!(text.contains("CSeq: 1 REGISTER\r\n"));
        assert!(text.contains("Expires: 60\r\n"));
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"));
        // The response itself parses.
        assert!(matches!(
            parse(text.as_bytes()),
            Ok(Inbound::Response(SipResponse { status: 200, .. }))
        ));
        assert_eq!(r.top_via().unwrap().response_destination(source), source);
    }

    #[test]
    fn via_without_rport() {
        let via = Via::parse("SIP/2.0/UDP phone.example;branch=z9hG4bKx").unwrap();
        let source: SocketAddr = "198.51.100.2:6000".parse().unwrap();
        assert_eq!(
            via.with_received(source),
            "SIP/2.0/UDP phone.example;branch=z9hG4bKx;received=198.51.100.2"
        );
        assert_eq!(
            via.response_destination(source),
            "198.51.100.2:5060".parse().unwrap()
        );
        let same = Via::parse("SIP/2.0/TCP 198.51.100.2:6000;branch=z9hG4bKy").unwrap();
        assert_eq!(same.with_received(source), same.raw);
        let spaced = Via::parse("SIP/2.0/UDP 10.0.0.1:5060 ;rport;branch=z9hG4bKs").unwrap();
        assert_eq!(
            spaced.with_received("10.0.0.2:7000".parse().unwrap()),
            "SIP/2.0/UDP 10.0.0.1:5060;rport=7000;branch=z9hG4bKs;received=10.0.0.2"
        );
        let v6 = Via::parse("SIP/2.0/UDP [2001:db8::1]:5062;branch=z9hG4bKz").unwrap();
        assert_eq!(v6.host, "2001:db8::1");
        assert_eq!(v6.port, Some(5062));
        assert_eq!(v6.sent_by(), "[2001:db8::1]:5062");
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/3.0/UDP h",
            "HTTP/2.0/UDP h",
            "SIP/2.0/UDP h:x",
            "SIP/2.0/ h",
        ] {
            assert_eq!(Via::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn final_response_keeps_existing_to_tag() {
        let text = REGISTER.replace(
            "<sip:1001@localhost>\r\n",
            "<sip:1001@localhost>;tag=x1\r\n",
        );
        let r = request(&text);
        let out = build_response(
            &r,
            200,
            "OK",
            "127.0.0.1:1".parse().unwrap(),
            Some("new"),
            &[],
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains(";tag=x1\r\n") && !out.contains("tag=new"),
            "{out}"
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let text = "OPTIONS sip:localhost SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bKa\r\nCSeq: 1 INVITE\r\n\r\n";
        let r = request(text);
        assert_eq!(
            r.missing_mandatory_headers(),
            vec!["From", "To", "Call-ID", "CSeq"]
        );
    }

    #[test]
    fn content_length_and_header_end() {
        let msg = b"OPTIONS sip:x SIP/2.0\r\nl: 5\r\n\r\nhello";
        let end = end_of_headers(msg).unwrap();
        assert_eq!(&msg[end..], b"hello");
        assert_eq!(content_length(&msg[..end]), Ok(Some(5)));
        assert_eq!(content_length(b"X: y\r\n\r\n"), Ok(None));
        assert_eq!(
            content_length(b"Content-Length: lots\r\n\r\n"),
            Err(BadContentLength("lots".into()))
        );
    }

    #[test]
    fn split_list_respects_quotes_and_brackets() {
        assert_eq!(
            split_list(r#""a, \"b" <sip:x@y;p=1,2>;q=1, <sip:z@w>"#),
            vec![r#""a, \"b" <sip:x@y;p=1,2>;q=1"#, "<sip:z@w>"]
        );
        assert!(split_list(" , ").is_empty());
    }

    #[test]
    fn uri_host_port_reads_sip_uris_only() {
        let hp = |h: &str, p: Option<u16>| Some((h.to_string(), p));
        assert_eq!(
            uri_host_port("sip:2001@10.0.0.7:5072;transport=udp"),
            hp("10.0.0.7", Some(5072))
        );
        assert_eq!(uri_host_port("sips:10.0.0.7"), hp("10.0.0.7", None));
        assert_eq!(
            uri_host_port("SIP:u:pw@[fd00::7]:5080?x=y"),
            hp("fd00::7", Some(5080))
        );
        assert_eq!(
            uri_host_port("sip:pbx.example.edu;lr"),
            hp("pbx.example.edu", None)
        );
        assert_eq!(uri_host_port("tel:+862150000000"), None);
        assert_eq!(uri_host_port("sip:2001@"), None);
        assert_eq!(uri_host_port("sip:2001@10.0.0.7:port"), None);
    }

    #[test]
    fn requests_go_to_the_contact_port_unless_the_agent_is_behind_nat() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        // Same host, another source port: a translation on the path (kube-proxy).
        assert_eq!(
            request_destination("sip:2002@10.244.0.1:5060", at("10.244.0.1:38211")),
            at("10.244.0.1:5060")
        );
        assert_eq!(
            request_destination("sip:2002@10.244.0.1", at("10.244.0.1:38211")),
            at("10.244.0.1:5060")
        );
        assert_eq!(
            request_destination("sip:2002@[fd00::5]:5072", at("[fd00::5]:4000")),
            at("[fd00::5]:5072")
        );
        // Behind NAT (a private Contact, a host name, a garbled one): the source.
        for contact in [
            "sip:2002@192.168.1.20:5060",
            "sip:2002@phone.example",
            "junk",
            "",
        ] {
            assert_eq!(
                request_destination(contact, at("203.0.113.9:61000")),
                at("203.0.113.9:61000"),
                "{contact}"
            );
        }
    }

    proptest! {
        #[test]
        fn request_destination_is_the_source_or_its_host(contact in ".{0,80}", port in 1u16..) {
            let source = SocketAddr::from(([10, 0, 0, 5], port));
            let to = request_destination(&contact, source);
            prop_assert_eq!(to.ip(), source.ip());
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Inbound::Request(r)) = parse(&bytes) {
                let _ = r.missing_mandatory_headers();
                let _ = build_response(&r, 400, "Bad Request", "127.0.0.1:5060".parse().unwrap(), Some("t"), &[]);
            }
        }

        #[test]
        fn parse_sip_like_never_panics(
            method in "(REGISTER|OPTIONS|INVITE|BYE)",
            headers in proptest::collection::vec("[A-Za-z-]{1,10}: [ -~]{0,40}", 0..8),
        ) {
            let text = format!("{method} sip:localhost SIP/2.0\r\n{}\r\n\r\n", headers.join("\r\n"));
            if let Ok(Inbound::Request(r)) = parse(text.as_bytes()) {
                let _ = r.missing_mandatory_headers();
                let _ = parse_contacts(r.header_values("Contact"));
                let _ = build_response(&r, 400, "Bad Request", "127.0.0.1:5060".parse().unwrap(), Some("t"), &[]);
            }
        }

        #[test]
        fn header_grammars_never_panic(text in "[ -~]{0,80}") {
            let _ = Via::parse(&text);
            let _ = NameAddr::parse(&text).map(|a| a.user().map(str::len));
            let _ = parse_contacts([text.as_str()]);
            let _ = split_list(&text);
            let _ = content_length(text.as_bytes());
        }
    }
}
