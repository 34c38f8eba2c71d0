//! RFC 4733 telephone-events: the DTMF keys a caller presses in an IVR menu or a seat dials
//! as a feature code, carried in RTP instead of audio.
//!
//! A sender repeats an event's packets while the key is held (same RTP timestamp, growing
//! duration), sends the end packet three times, and splits a very long press into segments
//! with new timestamps. The [`DtmfDetector`] turns that into one report per key press.

/// Why a telephone-event payload cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes is shorter than 4")]
    TooShort(usize),
}

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code; 0–15 are the DTMF keys.
    pub event: u8,
    /// Set on the (three) packets that end the event.
    pub end: bool,
    /// Power level in -dBm0, 0–63.
    pub volume: u8,
    /// Duration so far, in RTP timestamp units (1/8000 s for 8 kHz audio).
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first event of a payload. Longer payloads are accepted: the trailing bytes
    /// belong to redundancy the relay does not need.
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(Self {
                event: *event,
                end: flags & 0x80 != 0,
                // Bit 0x40 is reserved: ignored on receipt.
                volume: flags & 0x3F,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(DtmfError::TooShort(payload.len())),
        }
    }

    /// The 4-byte wire form (for sending keys, e.g. towards a trunk).
    pub fn to_bytes(&self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            u8::from(self.end) << 7 | (self.volume & 0x3F),
            d[0],
            d[1],
        ]
    }

    /// The DTMF key this event stands for, if it is one.
    pub fn key(&self) -> Option<char> {
        key_for_event(self.event)
    }
}

/// Maps event codes 0–15 to the keys `0`–`9`, `*`, `#`, `A`–`D`.
pub fn key_for_event(event: u8) -> Option<char> {
    const KEYS: [char; 16] = [
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
    ];
    KEYS.get(usize::from(event)).copied()
}

/// The event code of a DTMF key (the inverse of [`key_for_event`]; lower-case letters too).
pub fn event_for_key(key: char) -> Option<u8> {
    match key {
        '0'..='9' => Some(key as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(key as u8 - b'A' + 12),
        'a'..='d' => Some(key as u8 - b'a' + 12),
        _ => None,
    }
}

/// How many past events (by RTP timestamp) are remembered to drop late retransmissions.
const REMEMBERED_EVENTS: usize = 4;

#[derive(Debug, Clone, Copy)]
struct CurrentEvent {
    timestamp: u32,
    event: u8,
    ended: bool,
}

/// Detects key presses on one RTP stream (one call leg).
#[derive(Debug, Default)]
pub struct DtmfDetector {
    current: Option<CurrentEvent>,
    /// Recently finished events as (timestamp, event): a retransmitted end packet that
    /// arrives after the next key has started must not count as a new press.
    recent: [Option<(u32, u8)>; REMEMBERED_EVENTS],
    next_slot: usize,
}

impl DtmfDetector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one telephone-event RTP packet (its timestamp, marker bit and payload).
    /// Returns the key at the start of a new press, once; `None` for the continuation,
    /// end and retransmitted packets, non-DTMF events (e.g. flash) and malformed payloads.
    pub fn on_packet(&mut self, timestamp: u32, marker: bool, payload: &[u8]) -> Option<char> {
        let event = TelephoneEvent::parse(payload).ok()?;
        self.on_event(timestamp, marker, event)
    }

    /// As [`Self::on_packet`], for an already parsed event.
    pub fn on_event(
        &mut self,
        timestamp: u32,
        marker: bool,
        event: TelephoneEvent,
    ) -> Option<char> {
        if let Some(current) = &mut self.current {
            if current.timestamp == timestamp && current.event == event.event {
                // Repeat or end (or retransmitted end) of the press under way.
                current.ended |= event.end;
                return None;
            }
            if !current.ended && !marker && current.event == event.event {
                // A long press split into a new segment (RFC 4733 §2.5.1.3): new timestamp,
                // no marker, same key still held.
                current.timestamp = timestamp;
                current.ended = event.end;
                return None;
            }
        }
        if self.recent.contains(&Some((timestamp, event.event))) {
            return None;
        }
        if let Some(previous) = self.current.take() {
            self.remember(previous.timestamp, previous.event);
        }
        self.current = Some(CurrentEvent {
            timestamp,
            event: event.event,
            ended: event.end,
        });
        event.key()
    }

    fn remember(&mut self, timestamp: u32, event: u8) {
        self.recent[self.next_slot] = Some((timestamp, event));
        self.next_slot = (self.next_slot + 1) % REMEMBERED_EVENTS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    /// The packets a typical phone sends for one press: start with marker, updates, 3 ends.
    fn press(event: u8, timestamp: u32) -> Vec<(u32, bool, [u8; 4])> {
        let mut packets = vec![(timestamp, true, packet(event, false, 160))];
        for d in [320, 480, 640] {
            packets.push((timestamp, false, packet(event, false, d)));
        }
        for _ in 0..3 {
            packets.push((timestamp, false, packet(event, true, 800)));
        }
        packets
    }

    fn detect(packets: &[(u32, bool, [u8; 4])]) -> String {
        let mut detector = DtmfDetector::new();
        packets
            .iter()
            .filter_map(|(ts, m, p)| detector.on_packet(*ts, *m, p))
            .collect()
    }

    #[test]
    fn parses_payload_fields() {
        let e = TelephoneEvent::parse(&[11, 0x8A, 0x03, 0x20]).unwrap();
        assert_eq!(
            e,
            TelephoneEvent {
                event: 11,
                end: true,
                volume: 10,
                duration: 800
            }
        );
        assert_eq!(e.key(), Some('#'));
        assert_eq!(e.to_bytes(), [11, 0x8A, 0x03, 0x20]);
        // Reserved bit ignored, extra bytes tolerated.
        let r = TelephoneEvent::parse(&[1, 0x7F, 0, 1, 9, 9]).unwrap();
        assert_eq!((r.end, r.volume, r.duration), (false, 63, 1));
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]),
            Err(DtmfError::TooShort(3))
        );
        assert_eq!(TelephoneEvent::parse(&[]), Err(DtmfError::TooShort(0)));
    }

    #[test]
    fn maps_all_sixteen_keys_both_ways() {
        let keys = "0123456789*#ABCD";
        for (code, key) in keys.chars().enumerate() {
            assert_eq!(key_for_event(code as u8), Some(key));
            assert_eq!(event_for_key(key), Some(code as u8));
        }
        assert_eq!(event_for_key('d'), Some(15));
        assert_eq!(key_for_event(16), None); // flash
        assert_eq!(key_for_event(255), None);
        assert_eq!(event_for_key('x'), None);
    }

    #[test]
    fn one_press_reports_once() {
        assert_eq!(detect(&press(5, 1000)), "5");
    }

    #[test]
    fn repeated_same_key_reports_each_press() {
        let mut packets = press(1, 1000);
        packets.extend(press(1, 3000));
        packets.extend(press(2, 5000));
        assert_eq!(detect(&packets), "112");
    }

    #[test]
    fn lost_start_packet_still_reports_from_an_update() {
        let packets = &press(7, 1000)[1..];
        assert_eq!(detect(packets), "7");
    }

    #[test]
    fn only_end_packets_still_report_once() {
        let packets = &press(9, 1000)[4..];
        assert_eq!(detect(packets), "9");
    }

    #[test]
    fn long_press_segments_do_not_repeat_the_key() {
        let mut packets = vec![(1000, true, packet(3, false, 65535))];
        // Next segment: new timestamp, no marker, key still held.
        packets.push((1000 + 65535, false, packet(3, false, 160)));
        packets.push((1000 + 65535, false, packet(3, true, 4000)));
        packets.push((1000 + 65535, false, packet(3, true, 4000)));
        assert_eq!(detect(&packets), "3");
    }

    #[test]
    fn late_end_retransmission_after_next_key_is_ignored() {
        let mut packets = press(4, 1000);
        let late_end = packets[6];
        packets.extend(press(6, 2000));
        packets.insert(8, late_end);
        packets.push(late_end);
        assert_eq!(detect(&packets), "46");
    }

    #[test]
    fn marker_starts_a_new_press_even_without_an_end() {
        // The end packets of the first press were all lost.
        let packets = vec![
            (1000, true, packet(8, false, 160)),
            (2000, true, packet(8, false, 160)),
            (2000, false, packet(8, true, 800)),
        ];
        assert_eq!(detect(&packets), "88");
    }

    #[test]
    fn non_dtmf_events_and_garbage_report_nothing() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1, true, &packet(16, false, 160)), None);
        assert_eq!(d.on_packet(1, false, &[1, 2]), None);
        assert_eq!(d.on_packet(500, true, &packet(0, false, 160)), Some('0'));
    }

    proptest! {
        #[test]
        fn payload_round_trips(event in any::<u8>(), end in any::<bool>(), volume in 0u8..64, duration in any::<u16>()) {
            let e = TelephoneEvent { event, end, volume, duration };
            prop_assert_eq!(TelephoneEvent::parse(&e.to_bytes()), Ok(e));
        }

        #[test]
        fn arbitrary_packets_never_panic(packets in proptest::collection::vec((any::<u32>(), any::<bool>(), proptest::collection::vec(any::<u8>(), 0..8)), 0..50)) {
            let mut d = DtmfDetector::new();
            for (ts, marker, payload) in &packets {
                if let Some(key) = d.on_packet(*ts, *marker, payload) {
                    prop_assert!("0123456789*#ABCD".contains(key));
                }
            }
        }

        /// Any sequence of distinct presses, each with its retransmissions, reports exactly
        /// the pressed keys in order.
        #[test]
        fn presses_are_reported_exactly_once(keys in proptest::collection::vec(0u8..16, 1..20), start in any::<u32>()) {
            let mut packets = Vec::new();
            let mut expected = String::new();
            for (i, &event) in keys.iter().enumerate() {
                packets.extend(press(event, start.wrapping_add(i as u32 * 1600)));
                expected.push(key_for_event(event).unwrap());
            }
            prop_assert_eq!(detect(&packets), expected);
        }
    }
}
