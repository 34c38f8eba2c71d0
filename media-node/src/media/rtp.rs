//! RTP (RFC 3550) packets as a zero-copy view over a received datagram, a serializer, and
//! RTCP recognition for RTP/RTCP multiplexed on one port (RFC 5761).
//!
//! Every length is checked before it is used: any byte string either parses or returns an
//! [`RtpError`], so a malformed packet from a phone or trunk is dropped and counted.

/// The fixed RTP header size, before CSRCs and extension.
pub const FIXED_HEADER_LEN: usize = 12;
/// The only RTP version in use.
pub const VERSION: u8 = 2;
/// The most contributing sources a header can list (4-bit count).
pub const MAX_CSRCS: usize = 15;

/// Why a datagram is not a valid RTP or RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("datagram of {len} bytes is shorter than the {needed}-byte header")]
    TooShort { len: usize, needed: usize },
    #[error("RTP version {0} (only 2 is supported)")]
    Version(u8),
    #[error("padding of {padding} bytes does not fit the {available} bytes after the header")]
    Padding { padding: usize, available: usize },
    #[error("padding flag set with a zero padding count")]
    ZeroPadding,
    #[error("CSRC list of {len} bytes is not whole 4-byte entries")]
    CsrcLength { len: usize },
    #[error("{count} CSRCs given, at most 15 fit a header")]
    TooManyCsrcs { count: usize },
    #[error("header extension of {len} bytes is not a multiple of 4 or longer than 262140")]
    ExtensionLength { len: usize },
    #[error("RTCP packet length {declared} exceeds the {available} bytes left in the datagram")]
    RtcpLength { declared: usize, available: usize },
}

/// A header extension (RFC 3550 §5.3.1): a profile-defined id and 32-bit-aligned data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpExtension<'a> {
    pub profile: u16,
    pub data: &'a [u8],
}

/// An RTP packet: header fields plus borrowed CSRC, extension and payload bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    marker: bool,
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    ssrc: u32,
    /// Raw CSRC list, 4 bytes per source.
    csrcs: &'a [u8],
    extension: Option<RtpExtension<'a>>,
    payload: &'a [u8],
    /// Padding bytes after the payload, including the count byte itself (0 = no padding).
    padding: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> RtpPacket<'a> {
    /// A packet with no CSRCs, extension or padding (what the node sends). The payload
    /// type is 7 bits on the wire; payload types come from SDP, which limits them to 0–127.
    pub fn new(
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        payload: &'a [u8],
    ) -> Self {
        Self {
            marker: false,
            payload_type: payload_type & 0x7F,
            sequence,
            timestamp,
            ssrc,
            csrcs: &[],
            extension: None,
            payload,
            padding: 0,
        }
    }

    /// Parses a datagram, checking the version, CSRC count, extension and padding lengths.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, RtpError> {
        if datagram.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort {
                len: datagram.len(),
                needed: FIXED_HEADER_LEN,
            });
        }
        let version = datagram[0] >> 6;
        if version != VERSION {
            return Err(RtpError::Version(version));
        }
        let has_padding = datagram[0] & 0x20 != 0;
        let has_extension = datagram[0] & 0x10 != 0;
        let csrc_count = usize::from(datagram[0] & 0x0F);
        let mut header_len = FIXED_HEADER_LEN + 4 * csrc_count;
        if datagram.len() < header_len {
            return Err(RtpError::TooShort {
                len: datagram.len(),
                needed: header_len,
            });
        }
        let csrcs = &datagram[FIXED_HEADER_LEN..header_len];
        let extension = if has_extension {
            let ext_header_end = header_len + 4;
            if datagram.len() < ext_header_end {
                return Err(RtpError::TooShort {
                    len: datagram.len(),
                    needed: ext_header_end,
                });
            }
            let profile = be16(datagram, header_len);
            let words = usize::from(be16(datagram, header_len + 2));
            let ext_end = ext_header_end + 4 * words;
            if datagram.len() < ext_end {
                return Err(RtpError::TooShort {
                    len: datagram.len(),
                    needed: ext_end,
                });
            }
            let data = &datagram[ext_header_end..ext_end];
            header_len = ext_end;
            Some(RtpExtension { profile, data })
        } else {
            None
        };
        let available = datagram.len() - header_len;
        let padding = if has_padding {
            // The last byte counts the padding, itself included.
            let count = datagram[datagram.len() - 1];
            if count == 0 {
                return Err(RtpError::ZeroPadding);
            }
            if usize::from(count) > available {
                return Err(RtpError::Padding {
                    padding: usize::from(count),
                    available,
                });
            }
            count
        } else {
            0
        };
        Ok(Self {
            marker: datagram[1] & 0x80 != 0,
            payload_type: datagram[1] & 0x7F,
            sequence: be16(datagram, 2),
            timestamp: be32(datagram, 4),
            ssrc: be32(datagram, 8),
            csrcs,
            extension,
            payload: &datagram[header_len..datagram.len() - usize::from(padding)],
            padding,
        })
    }

    pub fn marker(&self) -> bool {
        self.marker
    }
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }
    pub fn sequence(&self) -> u16 {
        self.sequence
    }
    pub fn timestamp(&self) -> u32 {
        self.timestamp
    }
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }
    pub fn extension(&self) -> Option<RtpExtension<'a>> {
        self.extension
    }
    /// Padding bytes after the payload, including the count byte (0 when none).
    pub fn padding(&self) -> u8 {
        self.padding
    }
    /// The contributing sources, in header order.
    pub fn csrcs(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.csrcs.chunks_exact(4).map(|c| be32(c, 0))
    }
    /// The number of contributing sources.
    pub fn csrc_count(&self) -> usize {
        self.csrcs.len() / 4
    }

    pub fn with_marker(mut self, marker: bool) -> Self {
        self.marker = marker;
        self
    }
    pub fn with_payload(mut self, payload: &'a [u8]) -> Self {
        self.payload = payload;
        self
    }
    /// Rewrites the stream identity, as the relay does when it re-originates a stream
    /// (transcoding, prompt playback) so each leg sees one consistent source.
    pub fn with_stream(mut self, ssrc: u32, sequence: u16, timestamp: u32) -> Self {
        self.ssrc = ssrc;
        self.sequence = sequence;
        self.timestamp = timestamp;
        self
    }
    /// Sets the CSRC list from raw big-endian bytes (4 per source).
    pub fn with_csrc_bytes(mut self, raw: &'a [u8]) -> Result<Self, RtpError> {
        if !raw.len().is_multiple_of(4) {
            return Err(RtpError::CsrcLength { len: raw.len() });
        }
        let count = raw.len() / 4;
        if count > MAX_CSRCS {
            return Err(RtpError::TooManyCsrcs { count });
        }
        self.csrcs = raw;
        Ok(self)
    }
    /// Sets a header extension; its data must be whole 32-bit words.
    pub fn with_extension(mut self, extension: Option<RtpExtension<'a>>) -> Result<Self, RtpError> {
        if let Some(ext) = extension
            && (!ext.data.len().is_multiple_of(4) || ext.data.len() / 4 > usize::from(u16::MAX))
        {
            return Err(RtpError::ExtensionLength {
                len: ext.data.len(),
            });
        }
        self.extension = extension;
        Ok(self)
    }
    /// Sets the padding length (count byte included); written as zeros then the count.
    pub fn with_padding(mut self, padding: u8) -> Self {
        self.padding = padding;
        self
    }

    /// The serialized size in bytes.
    pub fn len(&self) -> usize {
        FIXED_HEADER_LEN
            + self.csrcs.len()
            + self.extension.map_or(0, |e| 4 + e.data.len())
            + self.payload.len()
            + usize::from(self.padding)
    }

    /// Never true: a packet always has a header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the wire form to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.len());
        let mut first = VERSION << 6 | (self.csrc_count() as u8 & 0x0F);
        if self.padding > 0 {
            first |= 0x20;
        }
        if self.extension.is_some() {
            first |= 0x10;
        }
        out.push(first);
        out.push(u8::from(self.marker) << 7 | (self.payload_type & 0x7F));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        out.extend_from_slice(self.csrcs);
        if let Some(ext) = self.extension {
            out.extend_from_slice(&ext.profile.to_be_bytes());
            // Lengths were checked by `with_extension` / `parse`; saturate rather than wrap.
            let words = u16::try_from(ext.data.len() / 4).unwrap_or(u16::MAX);
            out.extend_from_slice(&words.to_be_bytes());
            out.extend_from_slice(ext.data);
        }
        out.extend_from_slice(self.payload);
        if self.padding > 0 {
            out.extend(std::iter::repeat_n(0, usize::from(self.padding) - 1));
            out.push(self.padding);
        }
    }

    /// The wire form as a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.write_to(&mut out);
        out
    }
}

/// RTCP packet types in use: SR, RR, SDES, BYE, APP (RFC 3550 §12.1, 200–204).
pub const RTCP_PACKET_TYPES: std::ops::RangeInclusive<u8> = 200..=204;

/// The second-byte values RFC 5761 §4 sets aside for RTCP when multiplexed with RTP (RTP
/// payload types 64–95 with the marker bit). It covers 200–204 and also the RTP/AVPF
/// feedback types 205/206 (RFC 4585) that phones send, which must be passed, not parsed as RTP.
pub const RTCP_MUX_RANGE: std::ops::RangeInclusive<u8> = 192..=223;

/// What arrived on a media port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaDatagram<'a> {
    Rtp(RtpPacket<'a>),
    /// A compound RTCP packet, checked for framing only: the relay passes it through.
    Rtcp(&'a [u8]),
}

/// Tells RTP from RTCP by the second byte (RFC 5761 §4: RTCP packet types fall where an RTP
/// payload type 64–95 with the marker set would be, and those payload types are not used),
/// then checks it.
pub fn classify(datagram: &[u8]) -> Result<MediaDatagram<'_>, RtpError> {
    if datagram.len() >= 2 && RTCP_MUX_RANGE.contains(&datagram[1]) {
        check_rtcp(datagram)?;
        return Ok(MediaDatagram::Rtcp(datagram));
    }
    RtpPacket::parse(datagram).map(MediaDatagram::Rtp)
}

/// Checks the framing of a compound RTCP packet: version 2 and every sub-packet's length
/// within the datagram.
pub fn check_rtcp(datagram: &[u8]) -> Result<(), RtpError> {
    const HEADER: usize = 4;
    if datagram.len() < 8 {
        return Err(RtpError::TooShort {
            len: datagram.len(),
            needed: 8,
        });
    }
    let mut at = 0;
    while at < datagram.len() {
        let rest = &datagram[at..];
        if rest.len() < HEADER {
            return Err(RtpError::TooShort {
                len: rest.len(),
                needed: HEADER,
            });
        }
        let version = rest[0] >> 6;
        if version != VERSION {
            return Err(RtpError::Version(version));
        }
        let declared = (usize::from(be16(rest, 2)) + 1) * 4;
        if declared > rest.len() {
            return Err(RtpError::RtcpLength {
                declared,
                available: rest.len(),
            });
        }
        at += declared;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<u8> {
        let mut b = vec![
            0x80, 0x00, 0x12, 0x34, 0, 0, 0x01, 0x40, 0xDE, 0xAD, 0xBE, 0xEF,
        ];
        b.extend_from_slice(&[0xFF; 160]);
        b
    }

    #[test]
    fn parses_a_plain_pcmu_packet() {
        let bytes = sample();
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.payload_type(), 0);
        assert!(!p.marker());
        assert_eq!(p.sequence(), 0x1234);
        assert_eq!(p.timestamp(), 320);
        assert_eq!(p.ssrc(), 0xDEAD_BEEF);
        assert_eq!(p.payload().len(), 160);
        assert_eq!(p.csrc_count(), 0);
        assert_eq!(p.extension(), None);
        assert_eq!(p.padding(), 0);
        assert_eq!(p.len(), bytes.len());
        assert_eq!(p.to_vec(), bytes);
    }

    #[test]
    fn marker_and_payload_type_share_a_byte() {
        let mut bytes = sample();
        bytes[1] = 0x80 | 101;
        let p = RtpPacket::parse(&bytes).unwrap();
        assert!(p.marker());
        assert_eq!(p.payload_type(), 101);
    }

    #[test]
    fn csrcs_extension_and_padding() {
        let mut b = vec![0xB2, 8, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        b.extend_from_slice(&[0, 0, 0, 7, 0, 0, 0, 9]); // two CSRCs
        b.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // one-word extension
        b.extend_from_slice(&[0xD5; 4]); // payload
        b.extend_from_slice(&[0, 0, 3]); // padding of 3
        let p = RtpPacket::parse(&b).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![7, 9]);
        assert_eq!(
            p.extension(),
            Some(RtpExtension {
                profile: 0xBEDE,
                data: &[1, 2, 3, 4]
            })
        );
        assert_eq!(p.payload(), &[0xD5; 4]);
        assert_eq!(p.padding(), 3);
        assert_eq!(p.to_vec(), b);
    }

    #[test]
    fn rejects_malformed_headers() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]),
            Err(RtpError::TooShort {
                len: 11,
                needed: 12
            })
        );
        let mut v1 = sample();
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::Version(1)));
        let mut cc = sample()[..20].to_vec();
        cc[0] = 0x83; // three CSRCs need 24 bytes
        assert_eq!(
            RtpPacket::parse(&cc),
            Err(RtpError::TooShort {
                len: 20,
                needed: 24
            })
        );
        let mut ext = sample()[..14].to_vec();
        ext[0] = 0x90; // extension header cut short
        assert_eq!(
            RtpPacket::parse(&ext),
            Err(RtpError::TooShort {
                len: 14,
                needed: 16
            })
        );
        let mut ext_len = sample()[..20].to_vec();
        ext_len[0] = 0x90;
        ext_len[14] = 0;
        ext_len[15] = 5; // 20 bytes of extension do not fit
        assert_eq!(
            RtpPacket::parse(&ext_len),
            Err(RtpError::TooShort {
                len: 20,
                needed: 36
            })
        );
        let mut pad = sample()[..14].to_vec();
        pad[0] = 0xA0;
        pad[13] = 3; // 3 bytes of padding, only 2 after the header
        assert_eq!(
            RtpPacket::parse(&pad),
            Err(RtpError::Padding {
                padding: 3,
                available: 2
            })
        );
        pad[13] = 0;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::ZeroPadding));
        let mut header_only_pad = sample()[..12].to_vec();
        header_only_pad[0] = 0xA0;
        assert!(RtpPacket::parse(&header_only_pad).is_err());
    }

    #[test]
    fn header_only_packet_is_valid() {
        let bytes = sample();
        let p = RtpPacket::parse(&bytes[..12]).unwrap();
        assert!(p.payload().is_empty());
    }

    #[test]
    fn builders_check_lengths() {
        let p = RtpPacket::new(0, 1, 2, 3, &[]);
        assert!(p.with_csrc_bytes(&[0; 3]).is_err());
        assert!(p.with_csrc_bytes(&[0; 64]).is_err());
        assert!(p.with_csrc_bytes(&[0; 60]).is_ok());
        let bad = RtpExtension {
            profile: 1,
            data: &[0; 3],
        };
        assert!(p.with_extension(Some(bad)).is_err());
        let rewritten = p.with_stream(9, 8, 7).with_marker(true);
        let bytes = rewritten.to_vec();
        let back = RtpPacket::parse(&bytes).unwrap();
        assert_eq!((back.ssrc(), back.sequence(), back.timestamp()), (9, 8, 7));
        assert!(back.marker());
    }

    #[test]
    fn classifies_rtcp_by_packet_type() {
        // A receiver report with no report blocks: 8 bytes, length field 1.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert_eq!(classify(&rr), Ok(MediaDatagram::Rtcp(&rr)));
        // Feedback (205 RTPFB, 206 PSFB) is RTCP too.
        for pt in RTCP_PACKET_TYPES.chain([205, 206]) {
            let p = [0x80, pt, 0, 1, 0, 0, 0, 1];
            assert!(matches!(classify(&p), Ok(MediaDatagram::Rtcp(_))));
        }
        // Compound SR + SDES with a bad second length.
        let mut compound = vec![0x80, 200, 0, 1, 0, 0, 0, 1];
        compound.extend_from_slice(&[0x81, 202, 0, 5, 0, 0, 0, 1]);
        assert_eq!(
            classify(&compound),
            Err(RtpError::RtcpLength {
                declared: 24,
                available: 8
            })
        );
        compound.truncate(8);
        compound.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 1]);
        assert!(matches!(classify(&compound), Ok(MediaDatagram::Rtcp(_))));
        // Trailing garbage shorter than a header.
        compound.push(0x80);
        assert!(classify(&compound).is_err());
        // Plain RTP, including dynamic payload types with the marker set (outside 64-95).
        assert!(matches!(classify(&sample()), Ok(MediaDatagram::Rtp(_))));
        let mut dynamic = sample();
        dynamic[1] = 0x80 | 101;
        assert!(matches!(classify(&dynamic), Ok(MediaDatagram::Rtp(_))));
        assert!(classify(&[0x40, 200, 0, 1, 0, 0, 0, 0]).is_err());
    }

    /// marker, payload type, sequence, timestamp, SSRC, CSRC bytes, extension, payload, padding.
    type PacketParts = (
        bool,
        u8,
        u16,
        u32,
        u32,
        Vec<u8>,
        Option<(u16, Vec<u8>)>,
        Vec<u8>,
        u8,
    );

    fn packet_parts() -> impl Strategy<Value = PacketParts> {
        (
            any::<bool>(),
            0u8..128,
            any::<u16>(),
            any::<u32>(),
            any::<u32>(),
            (0usize..=15).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
            proptest::option::of((
                any::<u16>(),
                (0usize..8).prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * 4)),
            )),
            proptest::collection::vec(any::<u8>(), 0..400),
            any::<u8>(),
        )
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            if let Ok(p) = RtpPacket::parse(&bytes) {
                prop_assert!(p.len() == bytes.len());
            }
            let _ = classify(&bytes);
        }

        #[test]
        fn arbitrary_rtp_shaped_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 12..200)) {
            bytes[0] = 0x80 | (bytes[0] & 0x3F); // force version 2 to reach the deeper checks
            if let Ok(p) = RtpPacket::parse(&bytes) {
                prop_assert_eq!(p.len(), bytes.len());
                let again = p.to_vec();
                let reparsed = RtpPacket::parse(&again).unwrap();
                prop_assert_eq!(reparsed.payload(), p.payload());
                prop_assert_eq!(reparsed.sequence(), p.sequence());
            }
        }

        #[test]
        fn serialize_then_parse_round_trips((marker, pt, seq, ts, ssrc, csrcs, ext, payload, padding) in packet_parts()) {
            let ext = ext.as_ref().map(|(profile, data)| RtpExtension { profile: *profile, data });
            let p = RtpPacket::new(pt, seq, ts, ssrc, &payload)
                .with_marker(marker)
                .with_csrc_bytes(&csrcs).unwrap()
                .with_extension(ext).unwrap()
                .with_padding(padding);
            let bytes = p.to_vec();
            prop_assert_eq!(bytes.len(), p.len());
            let back = RtpPacket::parse(&bytes).unwrap();
            prop_assert_eq!(back, p);
            prop_assert_eq!(back.to_vec(), bytes.clone());
            // An RTP payload type can never look like RTCP unless it is 64-95 with the marker.
            let looks_like_rtcp = matches!(classify(&bytes), Ok(MediaDatagram::Rtcp(_)));
            prop_assert!(!looks_like_rtcp || (marker && (64..=95).contains(&pt)));
        }
    }
}
