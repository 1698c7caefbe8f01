//! 3PID media and canonical addresses (spec appendix "3PID Types").

use hearth_core::ErrCode;
use hearth_core::MatrixError;
use http::StatusCode;

pub(crate) const EMAIL: &str = "email";
pub(crate) const MSISDN: &str = "msisdn";

/// The canonical form of an email address: the whole address lower-cased
/// (Unicode case folding, as Sydent does since MSC2265), surrounding space
/// removed. Rejects what cannot be an address.
pub(crate) fn canonical_email(address: &str) -> Result<String, MatrixError> {
    let invalid = || {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode("M_INVALID_EMAIL"),
            "Invalid email address",
        )
    };
    let address = address.trim();
    let (local, domain) = address.rsplit_once('@').ok_or_else(invalid)?;
    if local.is_empty()
        || domain.is_empty()
        || address.len() > 254
        || address.chars().any(|c| c.is_whitespace() || c.is_control())
        || !domain.contains('.') && domain != "localhost"
    {
        return Err(invalid());
    }
    Ok(address.to_lowercase())
}

/// The canonical form of an address of either medium, as stored and as
/// looked up.
pub(crate) fn canonical(medium: &str, address: &str) -> Result<String, MatrixError> {
    match medium {
        EMAIL => canonical_email(address),
        MSISDN if !address.is_empty() && address.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(address.to_owned())
        }
        MSISDN => Err(MatrixError::invalid_param(
            "msisdn must be E.164 digits without '+'",
        )),
        _ => Err(MatrixError::invalid_param(format!(
            "Unsupported medium {medium:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_case_folded() {
        assert_eq!(
            canonical_email(" Alice@Example.ORG ").unwrap(),
            "alice@example.org"
        );
        assert_eq!(
            canonical_email("ÉMILE@exemple.fr").unwrap(),
            "émile@exemple.fr"
        );
        for bad in [
            "alice",
            "@example.org",
            "alice@",
            "a b@example.org",
            "alice@example",
        ] {
            assert!(canonical_email(bad).is_err(), "{bad}");
        }
        assert!(canonical("msisdn", "447700900000").is_ok());
        assert!(canonical("msisdn", "+447700900000").is_err());
        assert!(canonical("carrier_pigeon", "x").is_err());
    }
}
