//! Names and label values derived from a CallCenter name, always valid for the API server.
//!
//! A CallCenter name is a DNS subdomain (up to 253 characters, dots allowed, may start with a
//! digit), but a Service name must be a DNS-1035 label (63 characters, starts with a letter, no
//! dots) and a label value is at most 63 characters. When `<callcenter>-<suffix>` would not be
//! valid, the name is sanitised and shortened and an 8-hex-digit hash of the full CallCenter
//! name keeps it unique: `<shortened>-<hash>-<suffix>`.

use md5::{Digest, Md5};

/// Longest name of a Service (and, for uniformity, of every other child).
pub const MAX_NAME: usize = 63;
/// Longest StatefulSet name: its pods get the label `controller-revision-hash:
/// <name>-<10 characters>`, which must itself fit in 63 characters.
pub const MAX_STATEFUL_SET_NAME: usize = 52;
/// Longest label value.
pub const MAX_LABEL_VALUE: usize = 63;

/// Hex digits of the disambiguating hash.
const HASH_LEN: usize = 8;

fn short_hash(s: &str) -> String {
    let mut h = hex::encode(Md5::digest(s.as_bytes()));
    h.truncate(HASH_LEN);
    h
}

/// `<center>-<suffix>` if that is a valid DNS-1035 label of at most `max` characters, else a
/// shortened form with a hash of `center`. `suffix` is one of the operator's own fixed
/// suffixes (lowercase letters and dashes).
pub fn child_name(center: &str, suffix: &str, max: usize) -> String {
    let plain = format!("{center}-{suffix}");
    if plain.len() <= max && is_dns_1035_label(&plain) {
        return plain;
    }
    let mut head: String = center
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    if !head.starts_with(|c: char| c.is_ascii_lowercase()) {
        // A Service name must start with a letter.
        head.insert_str(0, "cc-");
    }
    // Room for `<head>-<hash>-<suffix>`.
    let room = max.saturating_sub(suffix.len() + HASH_LEN + 2);
    head.truncate(room);
    let head = head.trim_end_matches('-');
    format!("{head}-{}-{suffix}", short_hash(center))
}

/// `value` if it is a valid label value, else a shortened form ending in a hash of `value`.
/// CallCenter names only hold label-safe characters, so only length matters.
pub fn label_value(value: &str) -> String {
    if value.len() <= MAX_LABEL_VALUE {
        return value.to_string();
    }
    let mut head = value.to_string();
    head.truncate(MAX_LABEL_VALUE - HASH_LEN - 1);
    let head = head.trim_end_matches(['-', '.']);
    format!("{head}-{}", short_hash(value))
}

/// A DNS-1035 label: lowercase letters, digits and `-`, starting with a letter and ending
/// with a letter or digit, at most 63 characters.
pub fn is_dns_1035_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_lowercase()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_valid_names_are_kept_as_they_are() {
        assert_eq!(child_name("campus", "sip", MAX_NAME), "campus-sip");
        assert_eq!(
            child_name("help-desk-2", "media-headless", MAX_NAME),
            "help-desk-2-media-headless"
        );
        assert_eq!(label_value("campus"), "campus");
    }

    #[test]
    fn long_names_are_shortened_with_a_stable_hash() {
        let long = "a".repeat(60);
        let name = child_name(&long, "media-headless", MAX_NAME);
        assert_eq!(name.len(), MAX_NAME);
        assert!(is_dns_1035_label(&name), "{name}");
        assert!(name.ends_with("-media-headless"));
        assert_eq!(name, child_name(&long, "media-headless", MAX_NAME));
        let sts = child_name(&long, "media", MAX_STATEFUL_SET_NAME);
        assert!(sts.len() <= MAX_STATEFUL_SET_NAME);
        // The longest pod name and its revision label still fit.
        assert!(format!("{sts}-1").len() <= 63);
        assert!(format!("{sts}-0123456789").len() <= 63);
    }

    #[test]
    fn names_that_differ_only_after_the_cut_stay_distinct() {
        let a = format!("{}-north", "b".repeat(60));
        let b = format!("{}-south", "b".repeat(60));
        assert_ne!(
            child_name(&a, "sip", MAX_NAME),
            child_name(&b, "sip", MAX_NAME)
        );
        assert_ne!(label_value(&a), label_value(&b));
    }

    #[test]
    fn names_that_are_not_dns_labels_are_made_valid_and_stay_distinct() {
        for center in ["2026-training", "campus.north", "x"] {
            let name = child_name(center, "sip", MAX_NAME);
            assert!(is_dns_1035_label(&name), "{center} -> {name}");
        }
        assert!(child_name("2026-training", "sip", MAX_NAME).starts_with("cc-2026-training-"));
        assert!(child_name("campus.north", "sip", MAX_NAME).starts_with("campus-north-"));
        // `campus.north` must not take the names of a center called `campus-north`.
        assert_ne!(
            child_name("campus.north", "sip", MAX_NAME),
            child_name("campus-north", "sip", MAX_NAME)
        );
    }

    #[test]
    fn long_label_values_are_shortened_and_end_in_an_alphanumeric() {
        let long = format!("{}.{}", "c".repeat(53), "d".repeat(100));
        let v = label_value(&long);
        assert!(v.len() <= MAX_LABEL_VALUE);
        assert!(v.ends_with(|c: char| c.is_ascii_alphanumeric()));
        assert!(!v.contains(".-"), "{v}");
    }

    proptest::proptest! {
        /// Any name the API server accepts for a CallCenter (a DNS subdomain) gives valid,
        /// bounded child names and label values.
        #[test]
        fn every_call_center_name_gives_valid_names(
            center in "[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?"
        ) {
            for (suffix, max) in [
                ("media", MAX_STATEFUL_SET_NAME),
                ("media-headless", MAX_NAME),
                ("media-metrics", MAX_NAME),
                ("node-config", MAX_NAME),
                ("sip", MAX_NAME),
                ("active", MAX_NAME),
            ] {
                let name = child_name(&center, suffix, max);
                proptest::prop_assert!(name.len() <= max, "{name}");
                proptest::prop_assert!(is_dns_1035_label(&name), "{name}");
                proptest::prop_assert!(name.ends_with(suffix));
            }
            let value = label_value(&center);
            proptest::prop_assert!(value.len() <= MAX_LABEL_VALUE);
            proptest::prop_assert!(value.starts_with(|c: char| c.is_ascii_alphanumeric()));
            proptest::prop_assert!(value.ends_with(|c: char| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn dns_1035_labels_are_recognised() {
        assert!(is_dns_1035_label("campus-sip"));
        for bad in ["", "1abc", "abc-", "a.b", "Abc", &"a".repeat(64)] {
            assert!(!is_dns_1035_label(bad), "{bad:?}");
        }
    }
}
