//! Member PINs, held only as salted SHA-256 hashes.
//!
//! The node never keeps a plain PIN: [`PinSet::from_plain_lines`] hashes the Secret's lines as
//! it reads them, and errors name the line, never its content.

use std::collections::BTreeSet;
use std::fmt;

use switchboard_proto::node_config::{PIN_DIGITS, pin_digest};

/// Fewest digits a member PIN has.
pub const MIN_PIN_DIGITS: usize = *PIN_DIGITS.start();
/// Most digits a member PIN has.
pub const MAX_PIN_DIGITS: usize = *PIN_DIGITS.end();

/// Why a PIN list could not be read. Never carries a PIN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("PIN list line {line}: a PIN is digits 0-9 only")]
    NotDigits { line: usize },
    #[error("PIN list line {line}: a PIN has {MIN_PIN_DIGITS} to {MAX_PIN_DIGITS} digits")]
    Length { line: usize },
    #[error("PIN hash {index}: not a hex SHA-256 digest (64 hex digits)")]
    Hash { index: usize },
}

/// The valid PINs of one menu, as hashes of `salt ‖ pin`.
#[derive(Clone, PartialEq, Eq)]
pub struct PinSet {
    salt: Vec<u8>,
    hashes: BTreeSet<[u8; 32]>,
}

impl fmt::Debug for PinSet {
    // Hashes of short PINs can be brute-forced: keep them out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinSet")
            .field("pins", &self.hashes.len())
            .finish_non_exhaustive()
    }
}

impl PinSet {
    /// The hex SHA-256 of `salt ‖ pin`.
    pub fn hash(salt: impl AsRef<[u8]>, pin: &str) -> String {
        hex::encode(digest(salt.as_ref(), pin))
    }

    /// A set from hex hashes made with [`PinSet::hash`] and the same salt. Upper- or
    /// lower-case hex; surrounding whitespace is ignored.
    pub fn from_hashes<I, S>(salt: impl AsRef<[u8]>, hashes: I) -> Result<Self, PinError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let hashes = hashes
            .into_iter()
            .enumerate()
            .map(|(index, h)| {
                let mut bytes = [0u8; 32];
                hex::decode_to_slice(h.as_ref().trim(), &mut bytes)
                    .map(|()| bytes)
                    .map_err(|_| PinError::Hash { index })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            salt: salt.as_ref().to_vec(),
            hashes,
        })
    }

    /// A set from a Secret's text: one PIN per line, surrounding whitespace trimmed, empty
    /// lines skipped. A line that is not 4 to 12 digits refuses the whole list (line numbers
    /// start at 1).
    pub fn from_plain_lines(text: &str, salt: impl AsRef<[u8]>) -> Result<Self, PinError> {
        let salt = salt.as_ref();
        let mut hashes = BTreeSet::new();
        for (i, line) in text.lines().enumerate() {
            let pin = line.trim();
            if pin.is_empty() {
                continue;
            }
            let line = i + 1;
            if !pin.bytes().all(|b| b.is_ascii_digit()) {
                return Err(PinError::NotDigits { line });
            }
            if !(MIN_PIN_DIGITS..=MAX_PIN_DIGITS).contains(&pin.len()) {
                return Err(PinError::Length { line });
            }
            hashes.insert(digest(salt, pin));
        }
        Ok(Self {
            salt: salt.to_vec(),
            hashes,
        })
    }

    /// Whether `pin` is one of the set's PINs.
    pub fn contains(&self, pin: &str) -> bool {
        self.hashes.contains(&digest(&self.salt, pin))
    }

    /// How many PINs the set holds.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the set holds no PIN (every entry is then invalid).
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// The one PIN hash, shared with the config builder that hashes a Secret's PINs.
fn digest(salt: &[u8], pin: &str) -> [u8; 32] {
    pin_digest(salt, pin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_hex_sha256_of_salt_then_pin() {
        // sha256("abc") — salt "ab", PIN "c" — is the FIPS 180-2 test vector.
        assert_eq!(
            PinSet::hash("ab", "c"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_ne!(
            PinSet::hash("salt-1", "1234"),
            PinSet::hash("salt-2", "1234")
        );
    }

    #[test]
    fn plain_lines_are_trimmed_and_empty_lines_skipped() {
        let set = PinSet::from_plain_lines("1234\n\n  567890 \r\n\t\n123456789012\n", "s")
            .expect("valid list");
        assert_eq!(set.len(), 3);
        assert!(set.contains("1234"));
        assert!(set.contains("567890"));
        assert!(set.contains("123456789012"));
        assert!(!set.contains("12345"));
        assert!(!set.contains(""));
        assert!(!set.contains(" 1234"));
        assert!(PinSet::from_plain_lines("", "s").expect("empty").is_empty());
    }

    #[test]
    fn bad_lines_are_refused_by_number_without_the_pin() {
        let cases = [
            ("1234\n12a4\n", PinError::NotDigits { line: 2 }),
            ("1234\n\n-1234\n", PinError::NotDigits { line: 3 }),
            ("12 34\n", PinError::NotDigits { line: 1 }),
            ("١٢٣٤\n", PinError::NotDigits { line: 1 }),
            ("1234\n123\n", PinError::Length { line: 2 }),
            ("9876543210987\n", PinError::Length { line: 1 }),
        ];
        for (text, want) in cases {
            let err = PinSet::from_plain_lines(text, "s").expect_err(text);
            assert_eq!(err, want, "{text:?}");
            let msg = err.to_string();
            for secret in ["12a4", "-1234", "123\n", "9876543210987", "١٢٣٤", "12 34"] {
                assert!(!msg.contains(secret), "{msg} echoes the PIN");
            }
        }
    }

    #[test]
    fn hashes_made_with_the_helper_match() {
        let salt = switchboard_proto::node_config::pin_salt("college", "campus", "members");
        let set = PinSet::from_hashes(
            &salt,
            [
                PinSet::hash(&salt, "4321"),
                PinSet::hash(&salt, "000000").to_uppercase(),
            ],
        )
        .expect("valid hashes");
        assert!(set.contains("4321"));
        assert!(set.contains("000000"));
        assert!(!set.contains("1234"));
        // The same hashes with another salt match nothing.
        let other = PinSet::from_hashes("other", [PinSet::hash(&salt, "4321")]).expect("hex");
        assert!(!other.contains("4321"));
    }

    #[test]
    fn malformed_hashes_are_refused_by_index() {
        let good = PinSet::hash("s", "1234");
        for bad in ["", "zz", &good[..63], &format!("{good}00")] {
            assert_eq!(
                PinSet::from_hashes("s", [good.as_str(), bad]),
                Err(PinError::Hash { index: 1 })
            );
        }
    }

    #[test]
    fn debug_shows_no_hash() {
        let set = PinSet::from_plain_lines("1234", "s").expect("valid");
        let shown = format!("{set:?}");
        assert!(!shown.contains(&PinSet::hash("s", "1234")[..8]), "{shown}");
        assert!(shown.contains("pins: 1"), "{shown}");
    }
}
