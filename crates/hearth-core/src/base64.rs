//! Unpadded base64 as the Matrix spec uses it: standard alphabet, no `=` on
//! output; input accepted with or without padding (appendix "Unpadded Base64").

use base64::Engine;
use base64::alphabet::{STANDARD, URL_SAFE};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

const ENCODER: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_encode_padding(false),
);

// Lenient like Python's decoder: the spec's own test seed carries non-zero
// trailing bits, and Synapse writes key files that Python decodes this way.
const DECODER: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

const URL_SAFE_ENCODER: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_encode_padding(false),
);

const URL_SAFE_DECODER: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Encodes bytes as unpadded standard base64.
pub fn encode(bytes: impl AsRef<[u8]>) -> String {
    ENCODER.encode(bytes)
}

/// Encodes bytes as unpadded URL-safe base64 (`-` and `_`), as lookup
/// hashes and tokens that travel in URLs are written.
pub fn encode_url_safe(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_ENCODER.encode(bytes)
}

/// Decodes URL-safe base64, padded or not, into `out`; the length decoded.
/// For hot paths that decode fixed-size values without allocating.
pub fn decode_url_safe_into(text: &str, out: &mut [u8]) -> Result<usize, base64::DecodeSliceError> {
    URL_SAFE_DECODER.decode_slice(text, out)
}

/// Decodes standard base64, padded or not.
pub fn decode(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    DECODER.decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_without_padding_and_decodes_either_form() {
        assert_eq!(encode(b"ab"), "YWI");
        assert_eq!(decode("YWI").unwrap(), b"ab");
        assert_eq!(decode("YWI=").unwrap(), b"ab");
        assert!(decode("Y!WI").is_err());
    }

    #[test]
    fn url_safe_round_trips_and_refuses_the_standard_alphabet() {
        let bytes = [0xfb, 0xff, 0xfe];
        assert_eq!(encode(bytes), "+//+");
        assert_eq!(encode_url_safe(bytes), "-__-");
        let mut out = [0u8; 8];
        assert_eq!(decode_url_safe_into("-__-", &mut out).unwrap(), 3);
        assert_eq!(&out[..3], &bytes);
        assert!(decode_url_safe_into("+//+", &mut out).is_err());
    }
}
