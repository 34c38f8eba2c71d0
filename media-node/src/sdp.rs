//! SDP (RFC 4566) offers and answers for G.711 audio with RFC 4733 telephone-events.
//!
//! The parser covers what the node needs: origin, session name, connection addresses (IPv4 and
//! IPv6), timing, media lines, `rtpmap`, `fmtp`, `ptime` and the direction attributes used for
//! hold. It is strict: a malformed known line is an error naming its line number, never a
//! panic, so a bad offer gets `488 Not Acceptable Here` (or 400) instead of a guess. Unknown
//! line types and attributes are kept or skipped as RFC 4566 asks.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use switchboard_crds::callcenter::Codec;

use crate::media::g711;

/// The dynamic payload type the node offers for telephone-events.
pub const TELEPHONE_EVENT_PT: u8 = 101;
/// Packet time the node sends and asks for, in milliseconds.
pub const PTIME_MS: u32 = 20;

/// A malformed session description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("SDP: {0}")]
    Session(String),
}

/// Why an offer or answer cannot set up the call's audio (→ SIP 488).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("no active RTP/AVP audio stream offered")]
    NoAudio,
    #[error(
        "no common codec: offered payload types {offered:?}, the call center allows {allowed:?}"
    )]
    NoCommonCodec {
        offered: Vec<u8>,
        allowed: Vec<Codec>,
    },
    #[error("audio stream has no connection address")]
    NoConnection,
}

/// Media direction (RFC 3264 §5.1, §8.4): what hold and resume change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to an offered one.
    pub fn answer(self) -> Self {
        match self {
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            other => other,
        }
    }

    /// Whether this side of the stream sends audio.
    pub fn sends(self) -> bool {
        matches!(self, Self::SendRecv | Self::SendOnly)
    }

    /// Whether this side of the stream receives audio.
    pub fn receives(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
    }
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub session_version: u64,
    /// Address or host name; only informative.
    pub address: String,
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u8>,
}

/// An attribute the parser does not interpret, kept as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// `audio`, `video`, `image`...
    pub kind: String,
    /// 0 rejects or disables the stream.
    pub port: u16,
    pub protocol: String,
    /// Format list; payload type numbers for RTP protocols.
    pub formats: Vec<String>,
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    /// `a=fmtp:<pt> <parameters>`.
    pub fmtps: Vec<(u8, String)>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
    pub attributes: Vec<Attribute>,
}

/// A session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin: Origin,
    pub session_name: String,
    pub connection: Option<IpAddr>,
    /// Session-level direction; a media-level one overrides it.
    pub direction: Option<Direction>,
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
}

fn line_error(line: usize, reason: impl Into<String>) -> SdpError {
    SdpError::Line {
        line,
        reason: reason.into(),
    }
}

/// `IN IP4 <addr>` / `IN IP6 <addr>` (a multicast TTL/count suffix is not supported).
fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let fields: Vec<&str> = value.split(' ').collect();
    let [net, addr_type, address] = fields[..] else {
        return Err(line_error(line, "c= needs <nettype> <addrtype> <address>"));
    };
    if net != "IN" {
        return Err(line_error(line, format!("network type {net:?} is not IN")));
    }
    let ip: IpAddr = address
        .parse()
        .map_err(|_| line_error(line, format!("{address:?} is not an IP address")))?;
    match (addr_type, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        _ => Err(line_error(
            line,
            format!("address {address} does not match address type {addr_type:?}"),
        )),
    }
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, SdpError> {
    let fields: Vec<&str> = value.split(' ').collect();
    let [username, id, version, net, addr_type, address] = fields[..] else {
        return Err(line_error(
            line,
            "o= needs <username> <sess-id> <sess-version> <nettype> <addrtype> <address>",
        ));
    };
    let number = |text: &str, what: &str| {
        text.parse::<u64>()
            .map_err(|_| line_error(line, format!("{what} {text:?} is not a number")))
    };
    if net != "IN" || !matches!(addr_type, "IP4" | "IP6") || address.is_empty() {
        return Err(line_error(line, "o= address must be IN IP4 or IN IP6"));
    }
    Ok(Origin {
        username: username.to_string(),
        session_id: number(id, "session id")?,
        session_version: number(version, "session version")?,
        address: address.to_string(),
    })
}

fn parse_media(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let mut fields = value.split(' ');
    let (Some(kind), Some(port), Some(protocol)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(line_error(line, "m= needs <media> <port> <proto> <fmt>..."));
    };
    let formats: Vec<String> = fields.map(str::to_string).collect();
    if kind.is_empty()
        || protocol.is_empty()
        || formats.is_empty()
        || formats.iter().any(String::is_empty)
    {
        return Err(line_error(line, "m= needs <media> <port> <proto> <fmt>..."));
    }
    // A port count (`49170/2`) is for layered codecs; one stream is all a call uses.
    let port_text = port.split_once('/').map_or(port, |(p, _)| p);
    let port: u16 = port_text
        .parse()
        .map_err(|_| line_error(line, format!("port {port:?} is not a number 0-65535")))?;
    if protocol.starts_with("RTP/") {
        for f in &formats {
            match f.parse::<u8>() {
                Ok(pt) if pt < 128 => {}
                _ => return Err(line_error(line, format!("payload type {f:?} is not 0-127"))),
            }
        }
    }
    Ok(MediaDescription {
        kind: kind.to_string(),
        port,
        protocol: protocol.to_string(),
        formats,
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        direction: None,
        ptime: None,
        attributes: Vec::new(),
    })
}

fn parse_payload_type(text: &str, line: usize) -> Result<u8, SdpError> {
    match text.parse::<u8>() {
        Ok(pt) if pt < 128 => Ok(pt),
        _ => Err(line_error(
            line,
            format!("payload type {text:?} is not 0-127"),
        )),
    }
}

fn parse_rtpmap(value: &str, line: usize) -> Result<RtpMap, SdpError> {
    let (pt, rest) = value
        .split_once(' ')
        .ok_or_else(|| line_error(line, "rtpmap needs <pt> <encoding>/<clock rate>"))?;
    let mut parts = rest.split('/');
    let encoding = parts.next().unwrap_or_default();
    let clock = parts.next();
    let channels = parts.next();
    if encoding.is_empty() || parts.next().is_some() {
        return Err(line_error(
            line,
            "rtpmap needs <pt> <encoding>/<clock rate>[/<channels>]",
        ));
    }
    let clock_rate = clock
        .and_then(|c| c.parse::<u32>().ok())
        .filter(|&c| c > 0)
        .ok_or_else(|| line_error(line, "rtpmap clock rate is missing or not a number"))?;
    let channels = channels
        .map(|c| {
            c.parse::<u8>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| line_error(line, format!("rtpmap channels {c:?} is not a number")))
        })
        .transpose()?;
    Ok(RtpMap {
        payload_type: parse_payload_type(pt, line)?,
        encoding: encoding.to_string(),
        clock_rate,
        channels,
    })
}

/// The attribute sink: session level until the first `m=`.
fn apply_attribute(
    value: &str,
    line: usize,
    session: &mut SessionDescription,
) -> Result<(), SdpError> {
    let (name, attr_value) = match value.split_once(':') {
        Some((name, v)) => (name, Some(v)),
        None => (value, None),
    };
    if name.is_empty() || name.contains(' ') {
        return Err(line_error(line, format!("malformed attribute {value:?}")));
    }
    let media = session.media.last_mut();
    if let Some(direction) = Direction::parse(name) {
        if attr_value.is_some() {
            return Err(line_error(line, format!("{name} takes no value")));
        }
        match media {
            Some(m) => m.direction = Some(direction),
            None => session.direction = Some(direction),
        }
        return Ok(());
    }
    match (name, attr_value, media) {
        ("rtpmap", Some(v), Some(m)) => m.rtpmaps.push(parse_rtpmap(v, line)?),
        ("fmtp", Some(v), Some(m)) => {
            let (pt, params) = v
                .split_once(' ')
                .ok_or_else(|| line_error(line, "fmtp needs <pt> <parameters>"))?;
            m.fmtps
                .push((parse_payload_type(pt, line)?, params.to_string()));
        }
        ("ptime", Some(v), Some(m)) => {
            let ms = v
                .parse::<u32>()
                .ok()
                .filter(|&ms| (1..=1000).contains(&ms))
                .ok_or_else(|| line_error(line, format!("ptime {v:?} is not 1-1000 ms")))?;
            m.ptime = Some(ms);
        }
        ("rtpmap" | "fmtp" | "ptime", None, _) => {
            return Err(line_error(line, format!("{name} needs a value")));
        }
        (_, _, media) => {
            let attribute = Attribute {
                name: name.to_string(),
                value: attr_value.map(str::to_string),
            };
            match media {
                Some(m) => m.attributes.push(attribute),
                None => session.attributes.push(attribute),
            }
        }
    }
    Ok(())
}

impl SessionDescription {
    /// Parses a session description (CRLF or bare LF line ends).
    pub fn parse(text: &str) -> Result<Self, SdpError> {
        // Blank lines at the end (some phones add one after the last CRLF) carry nothing;
        // blank lines inside are errors.
        let body = text.trim_end_matches(['\r', '\n']);
        let mut session = SessionDescription {
            origin: Origin {
                username: String::new(),
                session_id: 0,
                session_version: 0,
                address: String::new(),
            },
            session_name: String::new(),
            connection: None,
            direction: None,
            attributes: Vec::new(),
            media: Vec::new(),
        };
        let (mut seen_origin, mut seen_name, mut seen_timing) = (false, false, false);
        for (index, raw) in body.split('\n').enumerate() {
            let line = index + 1;
            let raw = raw.strip_suffix('\r').unwrap_or(raw);
            let bytes = raw.as_bytes();
            if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
                return Err(line_error(line, "expected <type>=<value>"));
            }
            let kind = bytes[0];
            let value = &raw[2..];
            if line == 1 {
                if kind != b'v' || value != "0" {
                    return Err(line_error(line, "must be v=0"));
                }
                continue;
            }
            let in_media = !session.media.is_empty();
            match kind {
                b'v' => return Err(line_error(line, "v= may appear only first")),
                b'o' if !in_media && !seen_origin => {
                    session.origin = parse_origin(value, line)?;
                    seen_origin = true;
                }
                b's' if !in_media && !seen_name => {
                    if value.is_empty() {
                        return Err(line_error(line, "s= must not be empty (use a space)"));
                    }
                    session.session_name = value.to_string();
                    seen_name = true;
                }
                b't' if !in_media => {
                    let fields: Vec<&str> = value.split(' ').collect();
                    let valid =
                        fields.len() == 2 && fields.iter().all(|f| f.parse::<u64>().is_ok());
                    if !valid {
                        return Err(line_error(line, "t= needs <start> <stop>"));
                    }
                    seen_timing = true;
                }
                b'o' | b's' | b't' => {
                    return Err(line_error(
                        line,
                        format!("{}= is out of place", kind as char),
                    ));
                }
                b'c' => {
                    let address = parse_connection(value, line)?;
                    match session.media.last_mut() {
                        Some(m) => m.connection = Some(address),
                        None => session.connection = Some(address),
                    }
                }
                b'm' => {
                    if !(seen_origin && seen_name && seen_timing) {
                        return Err(line_error(line, "m= before the o=, s= and t= lines"));
                    }
                    session.media.push(parse_media(value, line)?);
                }
                b'a' => apply_attribute(value, line, &mut session)?,
                // i= u= e= p= b= r= z= k= and unknown types: not needed to carry audio.
                _ => {}
            }
        }
        if !seen_origin {
            return Err(SdpError::Session("missing o= line".into()));
        }
        if !seen_name {
            return Err(SdpError::Session("missing s= line".into()));
        }
        if !seen_timing {
            return Err(SdpError::Session("missing t= line".into()));
        }
        if session.connection.is_none()
            && let Some(m) = session
                .media
                .iter()
                .find(|m| m.port != 0 && m.connection.is_none())
        {
            return Err(SdpError::Session(format!(
                "{} stream on port {} has no c= line",
                m.kind, m.port
            )));
        }
        Ok(session)
    }

    /// The first enabled RTP/AVP audio stream.
    pub fn audio(&self) -> Option<&MediaDescription> {
        self.media
            .iter()
            .find(|m| m.kind == "audio" && m.port != 0 && m.protocol == "RTP/AVP")
    }

    /// The stream's effective direction (media level, else session level, else sendrecv).
    pub fn direction_of(&self, media: &MediaDescription) -> Direction {
        media
            .direction
            .or(self.direction)
            .unwrap_or(Direction::SendRecv)
    }

    /// Where to send the stream's RTP.
    pub fn remote_address(&self, media: &MediaDescription) -> Option<SocketAddr> {
        media
            .connection
            .or(self.connection)
            .map(|ip| SocketAddr::new(ip, media.port))
    }
}

fn write_connection(f: &mut fmt::Formatter<'_>, ip: IpAddr) -> fmt::Result {
    let kind = if ip.is_ipv4() { "IP4" } else { "IP6" };
    write!(f, "c=IN {kind} {ip}\r\n")
}

impl fmt::Display for SessionDescription {
    /// The wire form, CRLF line ends.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        let origin_kind = if o.address.contains(':') {
            "IP6"
        } else {
            "IP4"
        };
        write!(f, "v=0\r\n")?;
        write!(
            f,
            "o={} {} {} IN {origin_kind} {}\r\n",
            o.username, o.session_id, o.session_version, o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        if let Some(ip) = self.connection {
            write_connection(f, ip)?;
        }
        write!(f, "t=0 0\r\n")?;
        write_attributes(f, self.direction, &self.attributes)?;
        for m in &self.media {
            write!(
                f,
                "m={} {} {} {}\r\n",
                m.kind,
                m.port,
                m.protocol,
                m.formats.join(" ")
            )?;
            if let Some(ip) = m.connection {
                write_connection(f, ip)?;
            }
            for map in &m.rtpmaps {
                write!(
                    f,
                    "a=rtpmap:{} {}/{}",
                    map.payload_type, map.encoding, map.clock_rate
                )?;
                if let Some(ch) = map.channels {
                    write!(f, "/{ch}")?;
                }
                write!(f, "\r\n")?;
            }
            for (pt, params) in &m.fmtps {
                write!(f, "a=fmtp:{pt} {params}\r\n")?;
            }
            if let Some(ms) = m.ptime {
                write!(f, "a=ptime:{ms}\r\n")?;
            }
            write_attributes(f, m.direction, &m.attributes)?;
        }
        Ok(())
    }
}

fn write_attributes(
    f: &mut fmt::Formatter<'_>,
    direction: Option<Direction>,
    attributes: &[Attribute],
) -> fmt::Result {
    for a in attributes {
        match &a.value {
            Some(v) => write!(f, "a={}:{v}\r\n", a.name)?,
            None => write!(f, "a={}\r\n", a.name)?,
        }
    }
    if let Some(d) = direction {
        write!(f, "a={}\r\n", d.as_str())?;
    }
    Ok(())
}

/// The node's side of a leg: where it receives RTP and its SDP session identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    pub address: IpAddr,
    pub rtp_port: u16,
    pub session_id: u64,
    /// Increment on every new offer or answer in the dialog (RFC 3264 §8).
    pub session_version: u64,
    pub direction: Direction,
}

/// What a leg's audio was agreed to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedAudio {
    pub codec: Codec,
    /// Payload type of the codec on this leg (0/8, or a dynamic number the peer chose).
    pub payload_type: u8,
    /// Payload type of telephone-events, if both sides support them.
    pub telephone_event: Option<u8>,
    /// Where to send RTP; `None` when the peer holds with a 0.0.0.0 address.
    pub remote: Option<SocketAddr>,
    /// The peer's direction for the stream (sendonly or inactive means it holds the call).
    pub remote_direction: Direction,
    pub ptime: Option<u32>,
}

impl NegotiatedAudio {
    /// Whether the peer put the call on hold.
    pub fn is_hold(&self) -> bool {
        self.remote.is_none() || !self.remote_direction.receives()
    }
}

/// The G.711 law a payload type stands for in a stream (rtpmap first, static numbers else).
fn codec_of(media: &MediaDescription, pt: u8) -> Option<Codec> {
    match media.rtpmaps.iter().find(|m| m.payload_type == pt) {
        Some(map) if map.clock_rate == 8000 && map.channels.unwrap_or(1) == 1 => {
            match map.encoding.to_ascii_uppercase().as_str() {
                "PCMU" => Some(Codec::Pcmu),
                "PCMA" => Some(Codec::Pcma),
                _ => None,
            }
        }
        Some(_) => None,
        None => g711::codec_for_payload_type(pt),
    }
}

fn telephone_event_of(media: &MediaDescription) -> Option<u8> {
    media.rtpmaps.iter().find_map(|m| {
        (m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000)
            .then_some(m.payload_type)
    })
}

fn payload_types(media: &MediaDescription) -> Vec<u8> {
    media
        .formats
        .iter()
        .filter_map(|f| f.parse().ok())
        .collect()
}

fn codec_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcmu => "PCMU",
        Codec::Pcma => "PCMA",
    }
}

fn audio_media(
    local: &LocalMedia,
    codecs: &[(Codec, u8)],
    telephone_event: Option<u8>,
) -> MediaDescription {
    let mut formats: Vec<String> = codecs.iter().map(|(_, pt)| pt.to_string()).collect();
    let mut rtpmaps: Vec<RtpMap> = codecs
        .iter()
        .map(|&(codec, pt)| RtpMap {
            payload_type: pt,
            encoding: codec_name(codec).to_string(),
            clock_rate: 8000,
            channels: None,
        })
        .collect();
    let mut fmtps = Vec::new();
    if let Some(pt) = telephone_event {
        formats.push(pt.to_string());
        rtpmaps.push(RtpMap {
            payload_type: pt,
            encoding: "telephone-event".into(),
            clock_rate: 8000,
            channels: None,
        });
        // Events 0-15 are the DTMF keys; 16 is flash.
        fmtps.push((pt, "0-16".to_string()));
    }
    MediaDescription {
        kind: "audio".into(),
        port: local.rtp_port,
        protocol: "RTP/AVP".into(),
        formats,
        connection: None,
        rtpmaps,
        fmtps,
        direction: Some(local.direction),
        ptime: Some(PTIME_MS),
        attributes: Vec::new(),
    }
}

fn session(local: &LocalMedia, media: Vec<MediaDescription>) -> SessionDescription {
    SessionDescription {
        origin: Origin {
            username: "switchboard".into(),
            session_id: local.session_id,
            session_version: local.session_version,
            address: local.address.to_string(),
        },
        session_name: "switchboard".into(),
        connection: Some(local.address),
        direction: None,
        attributes: Vec::new(),
        media,
    }
}

/// The node's offer: the call center's codecs in preference order, then telephone-event.
pub fn build_offer(local: &LocalMedia, codecs: &[Codec]) -> SessionDescription {
    let codecs: Vec<(Codec, u8)> = codecs.iter().map(|&c| (c, g711::payload_type(c))).collect();
    session(
        local,
        vec![audio_media(local, &codecs, Some(TELEPHONE_EVENT_PT))],
    )
}

/// An offer for given codecs with the payload types already agreed on a leg (dynamic numbers
/// kept), plus telephone-event when agreed: what a re-INVITE offers on an established leg.
pub fn build_offer_with(
    local: &LocalMedia,
    codecs: &[(Codec, u8)],
    telephone_event: Option<u8>,
) -> SessionDescription {
    session(local, vec![audio_media(local, codecs, telephone_event)])
}

/// Answers an offer: the first of the call center's codecs (in its preference order) that the
/// offer carries, plus telephone-event when offered. Other streams are rejected with port 0
/// (RFC 3264 §6: the answer has as many m= lines as the offer).
pub fn answer_offer(
    offer: &SessionDescription,
    preferences: &[Codec],
    local: &LocalMedia,
) -> Result<(SessionDescription, NegotiatedAudio), NegotiationError> {
    let audio_index = offer
        .media
        .iter()
        .position(|m| m.kind == "audio" && m.port != 0 && m.protocol == "RTP/AVP")
        .ok_or(NegotiationError::NoAudio)?;
    let audio = &offer.media[audio_index];
    let offered = payload_types(audio);
    let (codec, payload_type) = preferences
        .iter()
        .find_map(|&want| {
            offered
                .iter()
                .find(|&&pt| codec_of(audio, pt) == Some(want))
                .map(|&pt| (want, pt))
        })
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: offered.clone(),
            allowed: preferences.to_vec(),
        })?;
    let telephone_event = telephone_event_of(audio).filter(|pt| offered.contains(pt));
    let connection = audio
        .connection
        .or(offer.connection)
        .ok_or(NegotiationError::NoConnection)?;
    let remote_direction = offer.direction_of(audio);
    let answer_local = LocalMedia {
        direction: remote_direction.answer(),
        ..local.clone()
    };
    let media = offer
        .media
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if i == audio_index {
                audio_media(&answer_local, &[(codec, payload_type)], telephone_event)
            } else {
                MediaDescription {
                    kind: m.kind.clone(),
                    port: 0,
                    protocol: m.protocol.clone(),
                    formats: m.formats.clone(),
                    connection: None,
                    rtpmaps: Vec::new(),
                    fmtps: Vec::new(),
                    direction: None,
                    ptime: None,
                    attributes: Vec::new(),
                }
            }
        })
        .collect();
    let negotiated = NegotiatedAudio {
        codec,
        payload_type,
        telephone_event,
        remote: (!connection.is_unspecified()).then(|| SocketAddr::new(connection, audio.port)),
        remote_direction,
        ptime: audio.ptime,
    };
    Ok((session(&answer_local, media), negotiated))
}

/// Reads a peer's answer to the node's offer: the first G.711 payload type it lists.
pub fn read_answer(answer: &SessionDescription) -> Result<NegotiatedAudio, NegotiationError> {
    let audio = answer.audio().ok_or(NegotiationError::NoAudio)?;
    let offered = payload_types(audio);
    let (codec, payload_type) = offered
        .iter()
        .find_map(|&pt| codec_of(audio, pt).map(|c| (c, pt)))
        .ok_or_else(|| NegotiationError::NoCommonCodec {
            offered: offered.clone(),
            allowed: vec![Codec::Pcmu, Codec::Pcma],
        })?;
    let connection = audio
        .connection
        .or(answer.connection)
        .ok_or(NegotiationError::NoConnection)?;
    Ok(NegotiatedAudio {
        codec,
        payload_type,
        telephone_event: telephone_event_of(audio).filter(|pt| offered.contains(pt)),
        remote: (!connection.is_unspecified()).then(|| SocketAddr::new(connection, audio.port)),
        remote_direction: answer.direction_of(audio),
        ptime: audio.ptime,
    })
}

/// The unspecified IPv4 address, used by old-style hold (RFC 2543 `c=IN IP4 0.0.0.0`).
pub const HOLD_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PHONE_OFFER: &str = "v=0\r\n\
        o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n\
        s=-\r\n\
        c=IN IP4 192.0.2.10\r\n\
        t=0 0\r\n\
        m=audio 49170 RTP/AVP 8 0 18 101\r\n\
        a=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:18 G729/8000\r\n\
        a=fmtp:18 annexb=no\r\n\
        a=rtpmap:101 telephone-event/8000\r\n\
        a=fmtp:101 0-15\r\n\
        a=ptime:20\r\n\
        a=sendrecv\r\n";

    fn local() -> LocalMedia {
        LocalMedia {
            address: "198.51.100.7".parse().unwrap(),
            rtp_port: 10000,
            session_id: 42,
            session_version: 1,
            direction: Direction::SendRecv,
        }
    }

    #[test]
    fn parses_a_phone_offer() {
        let sdp = SessionDescription::parse(PHONE_OFFER).unwrap();
        assert_eq!(sdp.origin.username, "alice");
        assert_eq!(sdp.origin.session_id, 2890844526);
        assert_eq!(sdp.session_name, "-");
        assert_eq!(sdp.connection, Some("192.0.2.10".parse().unwrap()));
        let audio = sdp.audio().unwrap();
        assert_eq!(audio.port, 49170);
        assert_eq!(audio.formats, vec!["8", "0", "18", "101"]);
        assert_eq!(audio.rtpmaps.len(), 4);
        assert_eq!(
            audio.fmtps,
            vec![(18, "annexb=no".into()), (101, "0-15".into())]
        );
        assert_eq!(audio.ptime, Some(20));
        assert_eq!(audio.direction, Some(Direction::SendRecv));
        assert_eq!(
            sdp.remote_address(audio),
            Some("192.0.2.10:49170".parse().unwrap())
        );
    }

    #[test]
    fn answer_picks_the_call_centers_first_common_codec() {
        let offer = SessionDescription::parse(PHONE_OFFER).unwrap();
        // The phone prefers PCMA, the call center PCMU: the call center's order wins.
        let (answer, audio) = answer_offer(&offer, &[Codec::Pcmu, Codec::Pcma], &local()).unwrap();
        assert_eq!(audio.codec, Codec::Pcmu);
        assert_eq!(audio.payload_type, 0);
        assert_eq!(audio.telephone_event, Some(101));
        assert_eq!(audio.remote, Some("192.0.2.10:49170".parse().unwrap()));
        assert!(!audio.is_hold());
        let text = answer.to_string();
        assert!(text.contains("m=audio 10000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 198.51.100.7\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));
        assert!(text.contains("a=sendrecv\r\n"));
        // The answer parses back to what was built.
        assert_eq!(SessionDescription::parse(&text).unwrap(), answer);
        let (_, alaw) = answer_offer(&offer, &[Codec::Pcma], &local()).unwrap();
        assert_eq!((alaw.codec, alaw.payload_type), (Codec::Pcma, 8));
    }

    #[test]
    fn answer_keeps_dynamic_payload_numbers_and_rejects_other_streams() {
        let offer = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns= \r\nt=0 0\r\n\
            m=video 5000 RTP/AVP 96\r\nc=IN IP6 2001:db8::1\r\n\
            m=audio 6000 RTP/AVP 97 96\r\nc=IN IP6 2001:db8::2\r\n\
            a=rtpmap:97 pcma/8000/1\r\na=rtpmap:96 telephone-event/8000\r\n";
        let offer = SessionDescription::parse(offer).unwrap();
        let (answer, audio) = answer_offer(&offer, &[Codec::Pcmu, Codec::Pcma], &local()).unwrap();
        assert_eq!((audio.codec, audio.payload_type), (Codec::Pcma, 97));
        assert_eq!(audio.telephone_event, Some(96));
        assert_eq!(audio.remote, Some("[2001:db8::2]:6000".parse().unwrap()));
        assert_eq!(answer.media.len(), 2);
        assert_eq!(
            (answer.media[0].kind.as_str(), answer.media[0].port),
            ("video", 0)
        );
        assert_eq!(answer.media[1].formats, vec!["97", "96"]);
        assert!(answer.to_string().contains("m=video 0 RTP/AVP 96\r\n"));
    }

    #[test]
    fn hold_and_resume() {
        for (offered, answered, hold) in [
            ("sendonly", Direction::RecvOnly, true),
            ("inactive", Direction::Inactive, true),
            ("recvonly", Direction::SendOnly, false),
            ("sendrecv", Direction::SendRecv, false),
        ] {
            let text = PHONE_OFFER.replace("a=sendrecv", &format!("a={offered}"));
            let offer = SessionDescription::parse(&text).unwrap();
            let (answer, audio) = answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap();
            assert_eq!(answer.media[0].direction, Some(answered));
            assert_eq!(audio.is_hold(), hold, "{offered}");
        }
        // Old-style hold: connection address 0.0.0.0.
        let text = PHONE_OFFER.replace("c=IN IP4 192.0.2.10", "c=IN IP4 0.0.0.0");
        let offer = SessionDescription::parse(&text).unwrap();
        let (_, audio) = answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap();
        assert!(audio.is_hold());
        assert_eq!(audio.remote, None);
        // Session-level direction applies when the stream has none.
        let text = PHONE_OFFER
            .replace("a=sendrecv\r\n", "")
            .replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
        let offer = SessionDescription::parse(&text).unwrap();
        assert_eq!(offer.direction, Some(Direction::SendOnly));
        let (_, audio) = answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap();
        assert_eq!(audio.remote_direction, Direction::SendOnly);
    }

    #[test]
    fn negotiation_failures() {
        let g729 = PHONE_OFFER.replace(
            "m=audio 49170 RTP/AVP 8 0 18 101",
            "m=audio 49170 RTP/AVP 18",
        );
        let offer = SessionDescription::parse(&g729).unwrap();
        assert_eq!(
            answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap_err(),
            NegotiationError::NoCommonCodec {
                offered: vec![18],
                allowed: vec![Codec::Pcmu]
            }
        );
        let srtp = PHONE_OFFER.replace("RTP/AVP", "RTP/SAVP");
        let offer = SessionDescription::parse(&srtp).unwrap();
        assert_eq!(
            answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap_err(),
            NegotiationError::NoAudio
        );
        let disabled = PHONE_OFFER.replace("m=audio 49170", "m=audio 0");
        let offer = SessionDescription::parse(&disabled).unwrap();
        assert_eq!(
            answer_offer(&offer, &[Codec::Pcmu], &local()).unwrap_err(),
            NegotiationError::NoAudio
        );
        // An rtpmap that renames a static number wins over the static meaning.
        let renamed = PHONE_OFFER
            .replace(
                "m=audio 49170 RTP/AVP 8 0 18 101",
                "m=audio 49170 RTP/AVP 0",
            )
            .replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:0 G722/8000");
        let offer = SessionDescription::parse(&renamed).unwrap();
        assert!(answer_offer(&offer, &[Codec::Pcmu], &local()).is_err());
    }

    #[test]
    fn offer_and_answer_round_trip() {
        let offer = build_offer(&local(), &[Codec::Pcma, Codec::Pcmu]);
        let text = offer.to_string();
        assert!(text.starts_with("v=0\r\no=switchboard 42 1 IN IP4 198.51.100.7\r\n"));
        assert!(text.contains("m=audio 10000 RTP/AVP 8 0 101\r\n"));
        assert!(text.contains("a=ptime:20\r\n"));
        let parsed = SessionDescription::parse(&text).unwrap();
        assert_eq!(parsed, offer);
        // A phone answers the node's offer with PCMU; the node reads it back.
        let phone = LocalMedia {
            address: "192.0.2.20".parse().unwrap(),
            rtp_port: 4000,
            ..local()
        };
        let (answer, _) = answer_offer(&parsed, &[Codec::Pcmu], &phone).unwrap();
        let audio = read_answer(&SessionDescription::parse(&answer.to_string()).unwrap()).unwrap();
        assert_eq!((audio.codec, audio.payload_type), (Codec::Pcmu, 0));
        assert_eq!(audio.telephone_event, Some(101));
        assert_eq!(audio.remote, Some("192.0.2.20:4000".parse().unwrap()));
        assert_eq!(audio.ptime, Some(20));
    }

    #[test]
    fn reoffer_keeps_the_agreed_payload_types() {
        let local = LocalMedia {
            direction: Direction::SendOnly,
            session_version: 3,
            ..local()
        };
        let offer = build_offer_with(&local, &[(Codec::Pcma, 97)], Some(96));
        let text = offer.to_string();
        assert!(
            text.contains("o=switchboard 42 3 IN IP4 198.51.100.7\r\n"),
            "{text}"
        );
        assert!(text.contains("m=audio 10000 RTP/AVP 97 96\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:97 PCMA/8000\r\n"), "{text}");
        assert!(text.contains("a=sendonly\r\n"), "{text}");
        let parsed = SessionDescription::parse(&text).unwrap();
        assert_eq!(parsed, offer);
        let audio = read_answer(&parsed).unwrap();
        assert_eq!((audio.codec, audio.payload_type), (Codec::Pcma, 97));
        assert_eq!(audio.telephone_event, Some(96));
        let plain = build_offer_with(&local, &[(Codec::Pcmu, 0)], None).to_string();
        assert!(plain.contains("m=audio 10000 RTP/AVP 0\r\n"), "{plain}");
        assert!(!plain.contains("telephone-event"), "{plain}");
    }

    #[test]
    fn lf_line_ends_and_unknown_lines_are_accepted() {
        let text = PHONE_OFFER
            .replace("\r\n", "\n")
            .replace("t=0 0\n", "b=AS:64\nt=0 0\nz=0 0\n");
        let sdp = SessionDescription::parse(&text).unwrap();
        assert_eq!(sdp.audio().unwrap().port, 49170);
        let with_attr = PHONE_OFFER.replace("a=ptime:20", "a=maxptime:40\r\na=rtcp:49171");
        let sdp = SessionDescription::parse(&with_attr).unwrap();
        assert_eq!(sdp.audio().unwrap().attributes.len(), 2);
    }

    fn error_line(text: &str) -> usize {
        match SessionDescription::parse(text) {
            Err(SdpError::Line { line, .. }) => line,
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn malformed_lines_are_reported_with_their_number() {
        let cases = [
            ("v=1", 1),
            ("o=alice 2890844526 2890844526 IN IP4", 2),
            ("o=alice x 1 IN IP4 host", 2),
            ("c=IN IP4 999.0.0.1", 4),
            ("c=IN IP6 192.0.2.10", 4),
            ("c=ATM NSAP 47", 4),
            ("t=0", 5),
            ("m=audio 70000 RTP/AVP 0", 6),
            ("m=audio 49170 RTP/AVP 0 200", 6),
            ("m=audio 49170 RTP/AVP", 6),
            ("a=rtpmap:8 PCMA", 7),
            ("a=rtpmap:8 PCMA/x", 7),
            ("a=rtpmap:300 PCMA/8000", 7),
            ("a=rtpmap:8 PCMA/8000/0", 7),
            ("a=fmtp:101", 11),
            ("a=ptime:0", 13),
            ("a=sendrecv:yes", 14),
            ("garbage", 0),
        ];
        let original: Vec<&str> = PHONE_OFFER.split("\r\n").collect();
        for (bad, line) in cases {
            let target = if line == 0 { 3 } else { line };
            let mut lines = original.clone();
            lines[target - 1] = bad;
            let text = lines.join("\r\n");
            assert_eq!(error_line(&text), target, "{bad}");
        }
        assert_eq!(error_line(""), 1);
        assert!(SessionDescription::parse(&format!("{PHONE_OFFER}\r\n")).is_ok());
        assert_eq!(error_line("v=0\r\n\r\ns=x"), 2);
        assert_eq!(error_line("v=0\r\nv=0"), 2);
        assert_eq!(error_line("v=0\r\nm=audio 1 RTP/AVP 0"), 2);
        assert_eq!(error_line("V=0"), 1);
    }

    #[test]
    fn missing_session_lines_are_reported() {
        assert_eq!(
            SessionDescription::parse("v=0\r\ns=x\r\nt=0 0\r\n"),
            Err(SdpError::Session("missing o= line".into()))
        );
        let no_c = PHONE_OFFER.replace("c=IN IP4 192.0.2.10\r\n", "");
        assert!(matches!(
            SessionDescription::parse(&no_c),
            Err(SdpError::Session(_))
        ));
        // A disabled stream needs no address.
        let disabled = no_c.replace("m=audio 49170", "m=audio 0");
        assert!(SessionDescription::parse(&disabled).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,400}") {
            let _ = SessionDescription::parse(&text);
        }

        /// Lines built from SDP-like pieces reach deep into the parser.
        #[test]
        fn sdp_shaped_input_never_panics(lines in proptest::collection::vec(
            (prop::sample::select(vec!["v", "o", "s", "c", "t", "m", "a", "b", "x"]),
             prop::sample::select(vec![
                 "0", "- 1 1 IN IP4 h", "IN IP4 10.0.0.1", "IN IP6 ::1", "0 0", "audio 4000 RTP/AVP 0 101",
                 "audio 0 RTP/AVP 8", "rtpmap:101 telephone-event/8000", "rtpmap:0 PCMU/8000/1",
                 "fmtp:101 0-15", "ptime:20", "sendonly", "inactive", "", " ", "rtpmap:", "ptime:",
                 "audio 1/2 RTP/AVP 300", "IN IP4 ::1", "foo:bar",
             ])), 0..14)) {
            let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\r\n")).collect();
            if let Ok(sdp) = SessionDescription::parse(&text) {
                let _ = answer_offer(&sdp, &[Codec::Pcmu, Codec::Pcma], &local());
                let _ = read_answer(&sdp);
                // Whatever parses re-serialises to something that parses the same.
                let again = SessionDescription::parse(&sdp.to_string());
                prop_assert!(again.is_ok(), "{:?}", again);
            }
        }

        #[test]
        fn built_offers_parse_back(port in 1u16.., id in any::<u64>(), v6 in any::<bool>(),
                                   codecs in proptest::sample::subsequence(vec![Codec::Pcmu, Codec::Pcma], 1..=2)) {
            let address: IpAddr = if v6 { "2001:db8::7".parse().unwrap() } else { "203.0.113.9".parse().unwrap() };
            let local = LocalMedia { address, rtp_port: port, session_id: id, session_version: id / 2, direction: Direction::SendRecv };
            let offer = build_offer(&local, &codecs);
            let parsed = SessionDescription::parse(&offer.to_string()).unwrap();
            prop_assert_eq!(&parsed, &offer);
            let (_, audio) = answer_offer(&parsed, &[Codec::Pcma, Codec::Pcmu], &local).unwrap();
            prop_assert_eq!(audio.remote, Some(SocketAddr::new(address, port)));
        }
    }
}
