//! The schema's patterns, compiled as the API server compiles them (RE2 syntax, which the
//! `regex` crate shares), accept and refuse what their descriptions promise.

use regex::Regex;
use switchboard_crds::common::*;

fn re(p: &str) -> Regex {
    Regex::new(p).expect("pattern compiles")
}

#[test]
fn patterns_accept_and_refuse_the_documented_values() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            EXTENSION_PATTERN,
            &["10", "2001", "99999999"],
            &["0", "0123", "1", "123456789", "20a1", "*72"],
        ),
        (
            E164_PATTERN,
            &["+862150000000", "+12"],
            &["862150000000", "+0123", "+1234567890123456", "+86 21"],
        ),
        (
            DIALED_NUMBER_PATTERN,
            &["+862150000000", "10010", "00"],
            &["1", "+", "abc", "+0"],
        ),
        (
            SKILL_PATTERN,
            &["billing", "mandarin", "tier-2"],
            &["Billing", "2fa", "", "a_b"],
        ),
        (DTMF_DIGIT_PATTERN, &["0", "9", "*", "#"], &["10", "a", ""]),
        (
            CLOCK_TIME_PATTERN,
            &["00:00", "08:30", "23:59", "24:00"],
            &["24:01", "8:30", "12:60", "25:00"],
        ),
        (
            DATE_PATTERN,
            &["2026-10-01", "2026-12-31"],
            &["2026-13-01", "2026-1-1", "26-10-01"],
        ),
        (
            PROMPT_PATTERN,
            &["welcome.wav", "campus/main-menu.wav"],
            &["/etc/x.wav", "welcome.mp3", ".wav"],
        ),
        (
            NAME_PATTERN,
            &["campus", "inbound-service", "a1"],
            &["Campus", "-a", "a-", "a_b"],
        ),
        (
            HOST_PATTERN,
            &["pbx.example.edu", "192.0.2.1", "2001:db8::1"],
            &["-bad", "a b", ""],
        ),
    ];
    for (pattern, good, bad) in cases {
        let r = re(pattern);
        for g in *good {
            assert!(r.is_match(g), "{pattern} should accept {g:?}");
        }
        for b in *bad {
            assert!(!r.is_match(b), "{pattern} should refuse {b:?}");
        }
    }
}
