//! Random values from the OS generator: tokens, identifiers, key seeds.
//! The OS generator failing leaves nothing safe to do, so that panics.

/// `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random number generator works");
    bytes
}

/// `N` random bytes as URL-safe unpadded base64 (`[A-Za-z0-9_-]`), which
/// also fits the spec's opaque-identifier grammar `[0-9a-zA-Z.=_-]`.
pub fn token<const N: usize>() -> String {
    crate::base64::encode_url_safe(bytes::<N>())
}

/// `N` random bytes as lower-case hex.
pub fn hex<const N: usize>() -> String {
    bytes::<N>().iter().map(|b| format!("{b:02x}")).collect()
}

/// `len` characters drawn from `alphabet`, which must hold at most 256
/// symbols. The slight modulo bias is irrelevant at the lengths used.
pub fn string(len: usize, alphabet: &[u8]) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in bytes::<32>() {
            if out.len() == len {
                break;
            }
            out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
        }
    }
    out
}

pub const ALPHANUMERIC: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
pub const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(token::<48>().len(), 64);
        assert!(
            token::<32>()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(hex::<16>().len(), 32);
        let s = string(40, ALPHANUMERIC);
        assert_eq!(s.len(), 40);
        assert!(s.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(token::<16>(), token::<16>());
    }
}
