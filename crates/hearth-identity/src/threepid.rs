//! 3PID media and canonical addresses (spec appendix "3PID Types").

use hearth_core::ErrCode;
use hearth_core::MatrixError;
use http::StatusCode;
use std::str::FromStr;

pub(crate) const EMAIL: &str = "email";
pub(crate) const MSISDN: &str = "msisdn";

/// An email address in the two forms lookups must find it by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Email {
    /// The canonical form the spec names (appendix "3PID Types"): Unicode
    /// default case folding of the whole address, so `Strauß@Example.com`
    /// is `strauss@example.com`. Stored, bound and mailed to.
    pub(crate) canonical: String,
    /// The lower-cased form, when it differs: what Element hashes
    /// (`toLowerCase()`), bending the spec. Indexed for lookups beside the
    /// canonical form so that both kinds of client find the binding.
    pub(crate) lower: Option<String>,
}

/// Checks an email address and returns its forms (surrounding space
/// removed). Rejects what cannot be an address: 400 `M_INVALID_EMAIL`.
pub(crate) fn email(address: &str) -> Result<Email, MatrixError> {
    let invalid = || {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::INVALID_EMAIL,
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
    let canonical = case_fold(address);
    let lower = address.to_lowercase();
    Ok(Email {
        lower: (lower != canonical).then_some(lower),
        canonical,
    })
}

/// The canonical form of an email address (see [`Email::canonical`]).
pub(crate) fn canonical_email(address: &str) -> Result<String, MatrixError> {
    email(address).map(|e| e.canonical)
}

/// Unicode default case folding; ASCII folds to lower case, cheaply.
pub(crate) fn case_fold(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        caseless::default_case_fold_str(s)
    }
}

/// A phone number in the two forms the API returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Msisdn {
    /// E.164 without the `+`: the canonical form, stored and looked up.
    pub(crate) msisdn: String,
    /// The international format for people, e.g. `+44 7700 900123`.
    pub(crate) intl_fmt: String,
}

/// Normalises a number as a person typed it, in the national format of
/// `country` (ISO 3166-1 alpha-2) or internationally with a `+`, to E.164
/// (libphonenumber's rules). What does not parse, or is too short or long
/// for E.164, is 400 `M_INVALID_ADDRESS` (spec `requestToken`; Sydent says
/// `M_INVALID_PHONE_NUMBER`).
///
/// Like Sydent, this does not demand that the number lies in a range known
/// to be allocated: the metadata lags behind new ranges, and a wrong
/// number costs one refused SMS (which the per-number limit bounds), while
/// a refused real one locks its owner out.
pub(crate) fn canonical_msisdn(
    country: Option<&str>,
    phone_number: &str,
) -> Result<Msisdn, MatrixError> {
    let invalid = || {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::INVALID_ADDRESS,
            "Invalid phone number",
        )
    };
    // An unknown or absent country still lets a number given with its `+`
    // through (Element sends `"country": null`, citing matrix-doc#2222).
    let country = country
        .and_then(|c| phonenumber::country::Id::from_str(&c.trim().to_ascii_uppercase()).ok());
    let number = phonenumber::parse(country, phone_number.trim()).map_err(|_| invalid())?;
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    let msisdn = e164.strip_prefix('+').unwrap_or(&e164).to_owned();
    // The shortest numbers in use (Niue's, Saint Helena's) have 7 digits
    // with their country code; E.164 allows at most 15.
    if !(7..=15).contains(&msisdn.len()) || !msisdn.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    Ok(Msisdn {
        msisdn,
        intl_fmt: number
            .format()
            .mode(phonenumber::Mode::International)
            .to_string(),
    })
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

    /// Spec appendix "3PID Types": `Strauß@Example.com` is
    /// `strauss@example.com`; Element's lower-cased form is kept beside it
    /// only when it differs.
    #[test]
    fn emails_are_case_folded() {
        assert_eq!(
            email(" Alice@Example.ORG ").unwrap(),
            Email {
                canonical: "alice@example.org".to_owned(),
                lower: None
            }
        );
        assert_eq!(
            email("Strauß@Example.com").unwrap(),
            Email {
                canonical: "strauss@example.com".to_owned(),
                lower: Some("strauß@example.com".to_owned())
            }
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

    /// Numbers typed nationally or internationally, with any spacing,
    /// become E.164 without `+` (spec appendix "3PID Types").
    #[test]
    fn phone_numbers_become_e164_digits() {
        let gb = canonical_msisdn(Some("GB"), "07700 900123").unwrap();
        assert_eq!(gb.msisdn, "447700900123");
        assert_eq!(gb.intl_fmt, "+44 7700 900123");
        assert_eq!(
            canonical_msisdn(Some("gb"), "+44 (0)7700-900123")
                .unwrap()
                .msisdn,
            "447700900123"
        );
        // The country is a default: a `+` number stands on its own.
        assert_eq!(
            canonical_msisdn(Some("FR"), "+1 650 253 0000")
                .unwrap()
                .msisdn,
            "16502530000"
        );
        assert_eq!(
            canonical_msisdn(Some(""), "+33 6 12 34 56 78")
                .unwrap()
                .msisdn,
            "33612345678"
        );
        // Element's Settings → Discovery sends `"country": null`.
        assert_eq!(
            canonical_msisdn(None, "+447700900123").unwrap().msisdn,
            "447700900123"
        );
        assert!(canonical_msisdn(None, "07700 900123").is_err());
        for (country, bad) in [
            ("GB", "12"),
            ("GB", "not a number"),
            ("XX", "07700 900123"),
            ("GB", "+44 1234567890123456"),
            ("GB", ""),
        ] {
            let e = canonical_msisdn(Some(country), bad).unwrap_err();
            assert_eq!(e.errcode.0, "M_INVALID_ADDRESS", "{country} {bad}");
        }
        assert!(canonical("msisdn", &gb.msisdn).is_ok());
    }
}
