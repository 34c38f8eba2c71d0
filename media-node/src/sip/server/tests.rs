use super::*;
use crate::sip::digest::{DigestCredentials, expected_response, ha1};

const REALM: &str = "localhost";
const PHONE: &str = "192.0.2.10:5062";

struct Harness {
    server: SipServer,
    epoch: Instant,
}

fn harness() -> Harness {
    let registry = Registry::new();
    let metrics = SipMetrics::new(&registry).unwrap();
    let seats = ["1001", "1002"]
        .into_iter()
        .map(|ext| SeatAccount {
            extension: ext.into(),
            ha1: ha1(ext, REALM, &format!("practice-{ext}")),
            max_contacts: 2,
        })
        .collect();
    let epoch = Instant::now();
    let server = SipServer::new(
        SipSettings {
            realm: REALM.into(),
            seats,
            policy: RegistrarPolicy::default(),
            nonce_lifetime: Duration::from_secs(300),
        },
        metrics,
        epoch,
    );
    Harness { server, epoch }
}

fn source() -> SocketAddr {
    PHONE.parse().unwrap()
}

struct Register<'a> {
    extension: &'a str,
    branch: &'a str,
    cseq: u32,
    expires: Option<u32>,
    contact: &'a str,
    authorization: Option<String>,
}

impl Default for Register<'_> {
    fn default() -> Self {
        Self {
            extension: "1001",
            branch: "z9hG4bK-1",
            cseq: 1,
            expires: Some(120),
            contact: "<sip:1001@192.0.2.10:5062>",
            authorization: None,
        }
    }
}

impl Register<'_> {
    fn text(&self) -> String {
        let mut text = format!(
            "REGISTER sip:localhost SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5062;branch={};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{ext}@localhost>;tag=abc\r\n\
             To: <sip:{ext}@localhost>\r\n\
             Call-ID: reg-call-1\r\n\
             CSeq: {} REGISTER\r\n\
             Contact: {}\r\n",
            self.branch,
            self.cseq,
            self.contact,
            ext = self.extension
        );
        if let Some(expires) = self.expires {
            text.push_str(&format!("Expires: {expires}\r\n"));
        }
        if let Some(auth) = &self.authorization {
            text.push_str(&format!("Authorization: {auth}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        text
    }
}

fn send(h: &Harness, text: &str, at: Instant) -> String {
    let out = h
        .server
        .handle(text.as_bytes(), source(), Transport::Udp, at)
        .expect("a response");
    String::from_utf8(out.bytes).unwrap()
}

fn status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap()
}

fn nonce_of(response: &str) -> String {
    let start = response.find("nonce=\"").unwrap() + 7;
    let end = response[start..].find('"').unwrap() + start;
    response[start..end].to_string()
}

fn authorization(user: &str, password: &str, nonce: &str, nc: u32) -> String {
    digest_authorization("REGISTER", user, password, nonce, nc)
}

/// A phone's digest answer (qop=auth) for a request of `method` to `sip:localhost`.
fn digest_authorization(method: &str, user: &str, password: &str, nonce: &str, nc: u32) -> String {
    let credentials = DigestCredentials {
        username: user.into(),
        realm: REALM.into(),
        nonce: nonce.into(),
        uri: "sip:localhost".into(),
        response: String::new(),
        qop: Some("auth".into()),
        nc: Some(nc),
        cnonce: Some("c0ffee".into()),
        opaque: None,
    };
    let response = expected_response(&credentials, method, &ha1(user, REALM, password));
    format!(
        "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"sip:localhost\", \
         response=\"{response}\", algorithm=MD5, qop=auth, nc={nc:08x}, cnonce=\"c0ffee\""
    )
}

/// Gets a challenge and returns its nonce.
fn challenge(h: &Harness, at: Instant) -> String {
    let response = send(
        h,
        &Register {
            branch: "z9hG4bK-challenge",
            ..Default::default()
        }
        .text(),
        at,
    );
    assert_eq!(status(&response), 401, "{response}");
    nonce_of(&response)
}

#[test]
fn options_gets_200_with_allow_accept_and_echoed_headers() {
    let h = harness();
    let request = "OPTIONS sip:localhost SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKopt;rport\r\n\
        From: <sip:probe@10.1.1.1>;tag=p1\r\n\
        To: <sip:localhost>\r\n\
        Call-ID: opt-1\r\n\
        CSeq: 7 OPTIONS\r\n\
        Content-Length: 0\r\n\r\n";
    let out = h
        .server
        .handle(request.as_bytes(), source(), Transport::Udp, h.epoch)
        .unwrap();
    assert_eq!(
        out.destination,
        source(),
        "rport: back to the source address"
    );
    let text = String::from_utf8(out.bytes).unwrap();
    assert_eq!(status(&text), 200);
    assert!(text.contains("Allow: REGISTER, OPTIONS\r\n"), "{text}");
    assert!(text.contains("Accept: application/sdp\r\n"));
    assert!(text.contains(
        "Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKopt;rport=5062;received=192.0.2.10\r\n"
    ));
    assert!(text.contains("To: <sip:localhost>;tag="));
    assert!(text.contains("CSeq: 7 OPTIONS\r\n"));
    assert!(text.contains("Call-ID: opt-1\r\n"));
}

#[test]
fn register_challenge_then_success_lists_contacts() {
    let h = harness();
    let now = h.epoch + Duration::from_secs(10);
    let response = send(&h, &Register::default().text(), now);
    assert_eq!(status(&response), 401);
    assert!(response.contains("WWW-Authenticate: Digest realm=\"localhost\", nonce=\""));
    assert!(response.contains("qop=\"auth\""));
    assert!(!response.contains("stale"));
    let nonce = nonce_of(&response);

    let ok = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        now,
    );
    assert_eq!(status(&ok), 200, "{ok}");
    assert!(
        ok.contains("Contact: <sip:1001@192.0.2.10:5062>;expires=120\r\n"),
        "{ok}"
    );
    assert_eq!(
        h.server.contacts("1001", now),
        vec!["sip:1001@192.0.2.10:5062"]
    );
    assert_eq!(h.server.metrics().registered_seats.get(), 1);
    assert_eq!(h.server.metrics().registered_contacts.get(), 1);

    // Un-register on the same nonce with the next nonce-count.
    let gone = send(
        &h,
        &Register {
            branch: "z9hG4bK-3",
            cseq: 3,
            expires: Some(0),
            authorization: Some(authorization("1001", "practice-1001", &nonce, 2)),
            ..Default::default()
        }
        .text(),
        now,
    );
    assert_eq!(status(&gone), 200, "{gone}");
    assert!(!gone.contains("Contact:"));
    assert!(h.server.contacts("1001", now).is_empty());
    assert_eq!(h.server.metrics().registered_seats.get(), 0);
}

#[test]
fn a_challenge_from_the_previous_active_is_answered_at_the_node_that_took_over() {
    // The active challenges the phone, then hands over (or fails) before the phone's answer
    // arrives; the answer reaches the other node, which took the active's nonce key.
    let active = harness();
    let next = harness();
    let now = active.epoch + Duration::from_secs(10);
    let nonce = nonce_of(&send(&active, &Register::default().text(), now));
    let answer = |branch| {
        Register {
            branch,
            cseq: 2,
            authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
            ..Default::default()
        }
        .text()
    };
    // Without the key the answer is challenged again: a phone (or SIPp) that takes the new
    // challenge for a retransmission of the first never gets through.
    assert_eq!(status(&send(&next, &answer("z9hG4bK-2"), now)), 401);
    next.server.adopt_nonce_key(active.server.nonces.key());
    let ok = send(&next, &answer("z9hG4bK-3"), now);
    assert_eq!(status(&ok), 200, "{ok}");
    assert_eq!(
        next.server.contacts("1001", now),
        vec!["sip:1001@192.0.2.10:5062"]
    );
}

#[test]
fn credentials_for_our_realm_are_picked_among_several() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let ours = authorization("1001", "practice-1001", &nonce, 1);
    let theirs = ours.replace("realm=\"localhost\"", "realm=\"elsewhere\"");
    let text = Register {
        branch: "z9hG4bK-2",
        cseq: 2,
        authorization: Some(theirs.clone()),
        ..Default::default()
    }
    .text();
    // Only the other realm: challenged for ours.
    assert_eq!(status(&send(&h, &text, h.epoch)), 401);
    let both = text
        .replace(
            "Content-Length: 0",
            &format!("Authorization: {ours}\r\nContent-Length: 0"),
        )
        .replace("z9hG4bK-2", "z9hG4bK-3")
        .replace("2 REGISTER", "3 REGISTER");
    let response = send(&h, &both, h.epoch);
    assert_eq!(status(&response), 200, "{response}");
}

#[test]
fn wrong_password_is_forbidden_and_counted() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("1001", "guess", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 403);
    assert_eq!(h.server.metrics().auth_failures.get(), 1);
    assert!(h.server.contacts("1001", h.epoch).is_empty());
}

#[test]
fn credentials_of_another_seat_are_forbidden() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    // 1002's valid password used to bind contacts to 1001.
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("1002", "practice-1002", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 403);
}

#[test]
fn unknown_extension_is_challenged_then_not_found() {
    let h = harness();
    let unknown = Register {
        extension: "4242",
        ..Default::default()
    };
    let response = send(&h, &unknown.text(), h.epoch);
    assert_eq!(status(&response), 401, "no hint before authentication");
    let nonce = nonce_of(&response);
    let response = send(
        &h,
        &Register {
            extension: "4242",
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("4242", "x", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 404);
}

#[test]
fn expired_nonce_gets_stale_challenge_and_forged_nonce_a_fresh_one() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let later = h.epoch + Duration::from_secs(301);
    let stale = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        later,
    );
    assert_eq!(status(&stale), 401);
    assert!(stale.contains("stale=true"), "{stale}");
    assert_ne!(nonce_of(&stale), nonce);

    let forged = "0".repeat(nonce.len());
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-3",
            cseq: 3,
            authorization: Some(authorization("1001", "practice-1001", &forged, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 401);
    assert!(!response.contains("stale"));
    assert_eq!(
        h.server.metrics().auth_failures.get(),
        0,
        "not a password failure"
    );
}

#[test]
fn replayed_nonce_count_is_refused_but_retransmission_gets_cached_answer() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let first = Register {
        branch: "z9hG4bK-2",
        cseq: 2,
        authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
        ..Default::default()
    };
    let ok = send(&h, &first.text(), h.epoch);
    assert_eq!(status(&ok), 200);
    // A retransmission (same branch) is answered from the transaction, byte for byte.
    let again = send(&h, &first.text(), h.epoch + Duration::from_secs(1));
    assert_eq!(again, ok);
    assert_eq!(h.server.metrics().retransmissions.get(), 1);
    // The same credentials in a new transaction are a replay.
    let replay = Register {
        branch: "z9hG4bK-9",
        cseq: 9,
        ..first
    };
    let refused = send(&h, &replay.text(), h.epoch + Duration::from_secs(2));
    assert_eq!(status(&refused), 401, "{refused}");
    // After Timer J the transaction is gone: the old request is processed (and refused) anew.
    let late = Register {
        branch: "z9hG4bK-2",
        cseq: 2,
        authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
        ..Default::default()
    };
    h.server
        .housekeeping(h.epoch + TIMER_J + Duration::from_secs(1));
    let response = send(&h, &late.text(), h.epoch + TIMER_J + Duration::from_secs(1));
    assert_eq!(status(&response), 401);
}

#[test]
fn a_flood_of_wrong_passwords_is_rate_limited() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    for i in 0..5u32 {
        let response = send(
            &h,
            &Register {
                branch: &format!("z9hG4bK-bad{i}"),
                cseq: 2 + i,
                authorization: Some(authorization("1001", "guess", &nonce, 1 + i)),
                ..Default::default()
            }
            .text(),
            h.epoch,
        );
        assert_eq!(status(&response), 403);
    }
    assert_eq!(h.server.metrics().auth_failures.get(), 5);
    // Now even the right password from that source is refused without digest work.
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-good",
            cseq: 20,
            authorization: Some(authorization("1001", "practice-1001", &nonce, 20)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 403);
    assert!(
        response.contains("Too Many Failed Authentications"),
        "{response}"
    );
    assert_eq!(h.server.metrics().auth_rate_limited.get(), 1);
    assert_eq!(
        h.server.metrics().auth_failures.get(),
        5,
        "no digest check was made"
    );
}

#[test]
fn too_brief_interval_gets_423_with_min_expires() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            expires: Some(10),
            authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 423);
    assert!(response.contains("Min-Expires: 60\r\n"));
}

#[test]
fn registration_expires_in_housekeeping() {
    let h = harness();
    let nonce = challenge(&h, h.epoch);
    let response = send(
        &h,
        &Register {
            branch: "z9hG4bK-2",
            cseq: 2,
            authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
            ..Default::default()
        }
        .text(),
        h.epoch,
    );
    assert_eq!(status(&response), 200);
    assert!(
        h.server
            .housekeeping(h.epoch + Duration::from_secs(119))
            .is_empty()
    );
    assert_eq!(
        h.server.housekeeping(h.epoch + Duration::from_secs(120)),
        vec!["1001".to_string()]
    );
    assert_eq!(h.server.metrics().registered_contacts.get(), 0);
}

#[test]
fn malformed_requests_get_400_or_are_dropped_and_counted() {
    let h = harness();
    // Missing Call-ID and To, but a Via to answer to.
    let text = "REGISTER sip:localhost SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKbad\r\n\
        From: <sip:1001@localhost>;tag=a\r\n\
        CSeq: 1 REGISTER\r\n\r\n";
    let out = h
        .server
        .handle(text.as_bytes(), source(), Transport::Udp, h.epoch)
        .unwrap();
    // No rport: to the source IP at the sent-by port.
    assert_eq!(out.destination, source());
    let text = String::from_utf8(out.bytes).unwrap();
    assert!(
        text.starts_with("SIP/2.0 400 Missing or Malformed To, Call-ID\r\n"),
        "{text}"
    );

    // No Via: nothing can be addressed.
    let no_via = "OPTIONS sip:localhost SIP/2.0\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert!(
        h.server
            .handle(no_via.as_bytes(), source(), Transport::Udp, h.epoch)
            .is_none()
    );
    assert_eq!(
        h.server
            .metrics()
            .dropped
            .with_label_values(&["no_via"])
            .get(),
        1
    );

    for junk in [
        &b""[..],
        b"\x00\xff\xfe",
        b"HELLO WORLD\r\n\r\n",
        b"REGISTER sip:x SIP/2.0\r\nVia",
    ] {
        assert!(
            h.server
                .handle(junk, source(), Transport::Udp, h.epoch)
                .is_none()
        );
    }
    assert_eq!(
        h.server
            .metrics()
            .dropped
            .with_label_values(&["unparsable"])
            .get(),
        4
    );

    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKq\r\nContent-Length: 0\r\n\r\n";
    assert!(
        h.server
            .handle(stray.as_bytes(), source(), Transport::Udp, h.epoch)
            .is_none()
    );
    assert_eq!(
        h.server
            .metrics()
            .dropped
            .with_label_values(&["stray_response"])
            .get(),
        1
    );

    // CSeq method that is not the request's method.
    let mismatch = Register::default()
        .text()
        .replace("1 REGISTER", "1 OPTIONS");
    assert_eq!(status(&send(&h, &mismatch, h.epoch)), 400);
    // A broken Authorization header.
    let broken = Register {
        authorization: Some("Digest username=\"1001".into()),
        ..Default::default()
    };
    assert_eq!(status(&send(&h, &broken.text(), h.epoch)), 400);
    // A broken Contact.
    let nonce = challenge(&h, h.epoch);
    let bad_contact = Register {
        branch: "z9hG4bK-c",
        cseq: 5,
        contact: "<sip:1001@host;expires=",
        authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
        ..Default::default()
    };
    assert_eq!(status(&send(&h, &bad_contact.text(), h.epoch)), 400);
}

fn request(method: &str, extra: &str) -> String {
    format!(
        "{method} sip:1001@localhost SIP/2.0\r\n\
         Via: SIP/2.0/TCP 192.0.2.10:5062;branch=z9hG4bK{method}\r\n\
         From: <sip:1002@localhost>;tag=f\r\n\
         To: <sip:1001@localhost>\r\n\
         Call-ID: c-{method}\r\n\
         CSeq: 1 {method}\r\n{extra}\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn methods_not_served_yet_get_honest_answers() {
    let h = harness();
    let answer = |text: String| {
        let out = h
            .server
            .handle(text.as_bytes(), source(), Transport::Tcp, h.epoch)
            .unwrap();
        assert_eq!(
            out.destination,
            source(),
            "TCP answers on the connection it came from"
        );
        String::from_utf8(out.bytes).unwrap()
    };
    let invite = answer(request("INVITE", ""));
    assert_eq!(status(&invite), 501);
    assert!(invite.contains("Allow: REGISTER, OPTIONS\r\n"));
    assert_eq!(status(&answer(request("BYE", ""))), 481);
    assert_eq!(status(&answer(request("CANCEL", ""))), 481);
    let message = answer(request("MESSAGE", ""));
    assert_eq!(status(&message), 405);
    assert!(message.contains("Allow: REGISTER, OPTIONS\r\n"));
    let required = answer(request("OPTIONS", "Require: 100rel\r\n"));
    assert_eq!(status(&required), 420);
    assert!(required.contains("Unsupported: 100rel\r\n"));
    // ACK is absorbed.
    assert!(
        h.server
            .handle(
                request("ACK", "").as_bytes(),
                source(),
                Transport::Tcp,
                h.epoch
            )
            .is_none()
    );
    assert_eq!(
        h.server
            .metrics()
            .requests
            .with_label_values(&["INVITE"])
            .get(),
        1
    );
    assert_eq!(
        h.server
            .metrics()
            .responses
            .with_label_values(&["481"])
            .get(),
        2
    );
}

#[test]
fn each_serving_mode_answers_new_calls_and_registrations_its_way() {
    use crate::sip::ServingMode;
    let h = harness();
    let outcome = |method: &str| {
        // A new transaction each time (the answer to a repeated one is the cached answer).
        let fresh = request(method, "")
            .replace("branch=z9hG4bK", &format!("branch=z9hG4bK{}", random_tag()));
        h.server
            .handle(fresh.as_bytes(), source(), Transport::Udp, h.epoch)
            .map(|out| status(&String::from_utf8(out.bytes).unwrap()))
    };
    // Not serving (a standby, a fenced active, a node draining on its own): 503, try again.
    for mode in [ServingMode::Standby, ServingMode::Draining] {
        h.server.set_mode(mode);
        assert_eq!(outcome("REGISTER"), Some(503), "{mode:?}");
        assert_eq!(outcome("INVITE"), Some(503), "{mode:?}");
    }
    // Handed over: no answer, so the phone's retransmission reaches the new active; what is
    // not new business is still answered.
    h.server.set_mode(ServingMode::HandingOver);
    assert_eq!(outcome("REGISTER"), None);
    assert_eq!(outcome("INVITE"), None);
    assert_eq!(outcome("OPTIONS"), Some(200));
    assert_eq!(outcome("BYE"), Some(481));
    assert_eq!(
        h.server
            .metrics()
            .dropped
            .with_label_values(&["handing_over"])
            .get(),
        2
    );
    h.server.set_mode(ServingMode::Active);
    assert_eq!(outcome("REGISTER"), Some(401));
}

#[test]
fn udp_response_without_rport_goes_to_sent_by_port() {
    let h = harness();
    let text = "OPTIONS sip:localhost SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKx\r\n\
        From: <sip:probe@10.1.1.1>;tag=p1\r\n\
        To: <sip:localhost>\r\n\
        Call-ID: opt-2\r\n\
        CSeq: 1 OPTIONS\r\n\r\n";
    let out = h
        .server
        .handle(text.as_bytes(), source(), Transport::Udp, h.epoch)
        .unwrap();
    assert_eq!(out.destination, "192.0.2.10:5070".parse().unwrap());
    let text = String::from_utf8(out.bytes).unwrap();
    assert!(
        text.contains("branch=z9hG4bKx;received=192.0.2.10\r\n"),
        "{text}"
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn handle_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let h = harness();
            let _ = h.server.handle(&bytes, source(), Transport::Udp, h.epoch);
        }

        /// Byte-level mutations of a complete, authenticated REGISTER reach every parser on
        /// the path (rsip, Via, Contact, Authorization, registrar).
        #[test]
        fn handle_never_panics_on_mutated_register(
            edits in proptest::collection::vec(
                (any::<proptest::sample::Index>(), any::<u8>(), 0u8..3),
                1..8,
            )
        ) {
            let h = harness();
            let nonce = h.server.nonces.issue(h.epoch);
            let mut bytes = Register {
                authorization: Some(authorization("1001", "practice-1001", &nonce, 1)),
                ..Default::default()
            }
            .text()
            .into_bytes();
            for (at, byte, op) in edits {
                let i = at.index(bytes.len() + 1);
                match op {
                    0 => bytes.insert(i, byte),
                    1 if i < bytes.len() => {
                        bytes.remove(i);
                    }
                    _ if i < bytes.len() => bytes[i] = byte,
                    _ => {}
                }
            }
            let _ = h.server.handle(&bytes, source(), Transport::Udp, h.epoch);
        }

        #[test]
        fn handle_never_panics_on_register_variants(
            auth in "[ -~]{0,120}",
            contact in "[ -~]{0,60}",
            expires in "[0-9a-z ]{0,12}",
        ) {
            let h = harness();
            let text = format!(
                "REGISTER sip:localhost SIP/2.0\r\n\
                 Via: SIP/2.0/UDP 192.0.2.10:5062;branch=z9hG4bKp;rport\r\n\
                 From: <sip:1001@localhost>;tag=a\r\n\
                 To: <sip:1001@localhost>\r\n\
                 Call-ID: p\r\n\
                 CSeq: 2 REGISTER\r\n\
                 Contact: {contact}\r\n\
                 Expires: {expires}\r\n\
                 Authorization: Digest {auth}\r\n\r\n"
            );
            let _ = h.server.handle(text.as_bytes(), source(), Transport::Udp, h.epoch);
        }
    }
}

mod calls {
    //! INVITE handling with the B2BUA on: the seat challenge, routing refusals and offers
    //! that cannot be bridged. Answered calls run against SIPp in `tests/sip_call.rs`.
    use super::*;
    use crate::call::CallSettings;
    use crate::media::ports::PortAllocator;

    fn calls_harness() -> (Harness, PortAllocator) {
        let h = harness();
        let ports = PortAllocator::new(41_000, 41_099).unwrap();
        let server = h
            .server
            .with_calls(CallSettings {
                ports: Some(ports.clone()),
                advertised_address: Some("127.0.0.1".parse().unwrap()),
                ..CallSettings::default()
            })
            .unwrap();
        (
            Harness {
                server,
                epoch: h.epoch,
            },
            ports,
        )
    }

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\n\
        t=0 0\r\nm=audio 4000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n";

    fn invite(to: &str, branch: &str, auth: Option<&str>, body: &str) -> String {
        let mut text = format!(
            "INVITE sip:{to}@localhost SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.10:5062;branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:1001@localhost>;tag=caller\r\n\
             To: <sip:{to}@localhost>\r\n\
             Call-ID: call-{branch}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:1001@192.0.2.10:5062>\r\n"
        );
        if let Some(auth) = auth {
            text.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        text.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        text
    }

    fn invite_authorization(user: &str, password: &str, nonce: &str, nc: u32) -> String {
        digest_authorization("INVITE", user, password, nonce, nc)
    }

    /// Challenges an INVITE and answers the challenge; returns the final response.
    fn authenticated(h: &Harness, to: &str, tag: &str, password: &str, body: &str) -> String {
        let challenge = send(
            h,
            &invite(to, &format!("z9hG4bK-c{tag}"), None, body),
            h.epoch,
        );
        assert_eq!(status(&challenge), 407, "{challenge}");
        assert!(challenge.contains("Proxy-Authenticate: Digest realm=\"localhost\""));
        let auth = invite_authorization("1001", password, &nonce_of(&challenge), 1);
        send(
            h,
            &invite(to, &format!("z9hG4bK-a{tag}"), Some(&auth), body),
            h.epoch,
        )
    }

    #[tokio::test]
    async fn invites_are_challenged_routed_and_refused_honestly() {
        let (h, ports) = calls_harness();
        // Unknown number, then a seat with no phone registered.
        assert_eq!(
            status(&authenticated(&h, "4711", "1", "practice-1001", OFFER)),
            404
        );
        assert_eq!(
            status(&authenticated(&h, "1002", "2", "practice-1001", OFFER)),
            480
        );
        // A wrong password is refused and counted.
        let before = h.server.metrics().auth_failures.get();
        assert_eq!(status(&authenticated(&h, "1002", "3", "wrong", OFFER)), 403);
        assert_eq!(h.server.metrics().auth_failures.get(), before + 1);
        // An in-dialog INVITE for no known call.
        let stray = invite("1002", "z9hG4bK-stray", None, OFFER)
            .replace("To: <sip:1002@localhost>", "To: <sip:1002@localhost>;tag=x");
        assert_eq!(status(&send(&h, &stray, h.epoch)), 481);
        assert_eq!(ports.in_use(), 0);
        let options = send(&h, &request("OPTIONS", ""), h.epoch);
        assert!(options.contains("Allow: INVITE, ACK, CANCEL, BYE, REGISTER, OPTIONS\r\n"));
    }

    #[tokio::test]
    async fn offers_that_cannot_be_bridged_are_refused_without_taking_ports() {
        let (h, ports) = calls_harness();
        let register = |branch: &'static str, auth: Option<String>| Register {
            extension: "1002",
            branch,
            contact: "<sip:1002@192.0.2.20:5064>",
            authorization: auth,
            ..Default::default()
        };
        let challenge = send(&h, &register("z9hG4bK-r1", None).text(), h.epoch);
        let auth = authorization("1002", "practice-1002", &nonce_of(&challenge), 1);
        let registered = send(&h, &register("z9hG4bK-r2", Some(auth)).text(), h.epoch);
        assert_eq!(status(&registered), 200, "{registered}");

        // Garbage SDP, and an offer without G.711. (No offer at all is a late offer, served:
        // see the `sip_hold` SIPp test.)
        assert_eq!(
            status(&authenticated(
                &h,
                "1002",
                "5",
                "practice-1001",
                "v=0\r\nm=oops\r\n"
            )),
            400
        );
        let g729 = OFFER
            .replace("RTP/AVP 8 101", "RTP/AVP 18")
            .replace("a=rtpmap:8 PCMA/8000\r\n", "");
        assert_eq!(
            status(&authenticated(&h, "1002", "6", "practice-1001", &g729)),
            488
        );
        assert_eq!(ports.in_use(), 0);
        assert_eq!(h.server.calls().unwrap().counters().started(), 0);
    }

    fn no_qop_authorization(user: &str, password: &str, nonce: &str) -> String {
        let credentials = DigestCredentials {
            username: user.into(),
            realm: REALM.into(),
            nonce: nonce.into(),
            uri: "sip:localhost".into(),
            response: String::new(),
            qop: None,
            nc: None,
            cnonce: None,
            opaque: None,
        };
        let response = expected_response(&credentials, "INVITE", &ha1(user, REALM, password));
        format!(
            "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{nonce}\", \
             uri=\"sip:localhost\", response=\"{response}\", algorithm=MD5"
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Authenticated INVITEs with damaged SDP never panic the node: they get 400/488, or
        /// become calls (100), or 503 once the port range is used up.
        #[test]
        fn damaged_offers_never_panic(
            cut in 0usize..400,
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            case in 0u32..u32::MAX,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _inside = runtime.enter();
            let (h, _ports) = calls_harness();
            let challenge = send(&h, &Register {
                extension: "1002",
                branch: "z9hG4bK-pr1",
                contact: "<sip:1002@192.0.2.20:5064>",
                ..Default::default()
            }.text(), h.epoch);
            let auth = authorization("1002", "practice-1002", &nonce_of(&challenge), 1);
            let registered = send(&h, &Register {
                extension: "1002",
                branch: "z9hG4bK-pr2",
                contact: "<sip:1002@192.0.2.20:5064>",
                authorization: Some(auth),
                ..Default::default()
            }.text(), h.epoch);
            proptest::prop_assert_eq!(status(&registered), 200);
            let first = send(&h, &invite("1002", "z9hG4bK-p0", None, OFFER), h.epoch);
            let auth = no_qop_authorization("1001", "practice-1001", &nonce_of(&first));
            let mut body = OFFER.as_bytes()[..cut.min(OFFER.len())].to_vec();
            body.extend_from_slice(&junk);
            body.extend_from_slice(&OFFER.as_bytes()[cut.min(OFFER.len())..]);
            let body = String::from_utf8_lossy(&body).into_owned();
            let text = invite("1002", &format!("z9hG4bK-p{case}"), Some(&auth), &body);
            let out = h.server.handle(text.as_bytes(), source(), Transport::Udp, h.epoch);
            if let Some(out) = out {
                let reply = String::from_utf8_lossy(&out.bytes).into_owned();
                proptest::prop_assert!(
                    [100, 400, 488, 503].contains(&status(&reply)),
                    "unexpected answer {}", reply
                );
            }
        }
    }
}
