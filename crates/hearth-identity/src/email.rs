//! Mail: validation codes (spec "Email associations") and third-party
//! invites (spec "Invitation storage"), sent over SMTP.
//!
//! Every mail is multipart text and HTML, rendered from templates compiled
//! into the binary; a file of the same name in `email.templates_dir`
//! replaces the built-in one. The same template set holds the pages the
//! `GET submitToken` link shows and the SMS text, so one directory brands
//! everything a person sees.
//!
//! Nothing here logs an address or a token: SMTP replies can quote the
//! recipient, so failures are logged by kind and reply code only.

use crate::config::{EmailConfig, SmtpTls};
use hearth_core::config::resolve_secret;
use hearth_core::http::RateLimiter;
use hearth_core::templates::{TemplateError, Templates};
use hearth_core::{ErrCode, MatrixError};
use http::StatusCode;
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::{AsyncSmtpTransport, AsyncSmtpTransportBuilder};
use lettre::{Address, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

/// How long one SMTP exchange (connect, TLS, each command) may take.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The built-in templates, by file name. `layout.html` is the frame the
/// HTML mails and pages extend; the `*_subject.txt` ones are one line.
const BUILT_IN: &[(&str, &str)] = &[
    ("layout.html", include_str!("../templates/layout.html")),
    (
        "validation_subject.txt",
        include_str!("../templates/validation_subject.txt"),
    ),
    (
        "validation.txt",
        include_str!("../templates/validation.txt"),
    ),
    (
        "validation.html",
        include_str!("../templates/validation.html"),
    ),
    (
        "invite_subject.txt",
        include_str!("../templates/invite_subject.txt"),
    ),
    ("invite.txt", include_str!("../templates/invite.txt")),
    ("invite.html", include_str!("../templates/invite.html")),
    (
        "validation_sms.txt",
        include_str!("../templates/validation_sms.txt"),
    ),
    (
        "validated.html",
        include_str!("../templates/validated.html"),
    ),
    (
        "validation_failed.html",
        include_str!("../templates/validation_failed.html"),
    ),
];

/// The mails this service sends.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Template {
    /// Context: `token`, `link`.
    Validation,
    /// Context: every field of the store-invite request by its name
    /// (`sender`, `sender_display_name`, `sender_avatar_url`, `room_id`,
    /// `room_alias`, `room_name`, `room_avatar_url`, `room_join_rules`,
    /// `room_type`, extra keys), the whole request as `request`, the spec's
    /// `inviter_name` and `room_avatar`, and `token`,
    /// `ephemeral_private_key`, `sign_url`, `web_client_location` and
    /// `invite_link` (the last two may be null).
    Invite,
}

impl Template {
    fn stem(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::Invite => "invite",
        }
    }
}

/// The identity service's templates: the built-ins under the operator's
/// `identity.email.templates_dir`, with `brand` in every context.
pub(crate) fn load_templates(config: &EmailConfig) -> Result<Templates, TemplateError> {
    let mut defaults = serde_json::Map::new();
    defaults.insert("brand".to_owned(), Value::String(config.brand.clone()));
    Templates::load(
        BUILT_IN,
        config.templates_dir.as_deref(),
        "identity.email.templates_dir",
        defaults,
    )
}

/// Sends mail over SMTP. The connection pool is built on first use, inside
/// the runtime that needs it.
pub(crate) struct Mailer {
    transport: AsyncSmtpTransportBuilder,
    pool: OnceLock<AsyncSmtpTransport<Tokio1Executor>>,
    from: Mailbox,
    /// Where `Message-ID`s are made: the domain of `from`.
    message_id_domain: String,
    templates: Templates,
    per_address: Arc<RateLimiter<String>>,
    target: String,
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("smtp", &self.target)
            .field("templates", &self.templates)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Checks the config and templates; connects to nothing yet.
    pub(crate) fn new(config: &EmailConfig) -> Result<Self, String> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| format!("identity.email.from {:?}: {e}", config.from))?;
        let host = config.smtp_host.as_str();
        if host.is_empty() {
            return Err("identity.email.smtp_host is empty".to_owned());
        }
        let mut transport = match config.smtp_tls {
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(
                host,
            )),
        }
        .map_err(|e| format!("identity.email.smtp_host {host:?}: {e}"))?
        .port(config.smtp_port)
        .timeout(Some(SMTP_TIMEOUT));
        let password = resolve_secret(
            "identity.email.smtp_password",
            config.smtp_password.as_ref(),
            config.smtp_password_file.as_deref(),
        )?;
        match (&config.smtp_username, password) {
            (Some(user), Some(password)) => {
                transport = transport
                    .credentials(Credentials::new(user.clone(), password.expose().to_owned()));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(
                    "identity.email.smtp_username is set: set identity.email.smtp_password (or smtp_password_file) too"
                        .to_owned(),
                );
            }
            (None, Some(_)) => {
                return Err(
                    "identity.email.smtp_password is set: set identity.email.smtp_username too"
                        .to_owned(),
                );
            }
        }
        Ok(Self {
            transport,
            pool: OnceLock::new(),
            message_id_domain: from.email.domain().to_owned(),
            from,
            templates: load_templates(config).map_err(|e| e.to_string())?,
            per_address: RateLimiter::per_period(
                config.per_address_burst,
                config.per_address_period.0,
            ),
            target: format!("{host}:{} ({:?})", config.smtp_port, config.smtp_tls),
        })
    }

    pub(crate) fn templates(&self) -> &Templates {
        &self.templates
    }

    /// The per-address limit (`email.per_address_*`). Validation mails
    /// check it; invites may too.
    pub(crate) fn per_address(&self) -> &RateLimiter<String> {
        &self.per_address
    }

    /// Renders `template` for `to` and sends it. A refused or failed
    /// delivery is 400 `M_EMAIL_SEND_ERROR`, where the spec lists it
    /// (Sydent answers 500); the warning logged says why.
    pub(crate) async fn send(
        &self,
        template: Template,
        to: &str,
        context: Value,
    ) -> Result<(), MatrixError> {
        let to = parse_address(to)?;
        let stem = template.stem();
        let subject = self
            .templates
            .render(&format!("{stem}_subject.txt"), &context)?;
        let text = self.templates.render(&format!("{stem}.txt"), &context)?;
        let html = self.templates.render(&format!("{stem}.html"), &context)?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(one_line(&subject))
            .message_id(Some(format!(
                "<{}@{}>",
                hearth_core::random::hex::<16>(),
                self.message_id_domain
            )))
            .date_now()
            .multipart(
                MultiPart::alternative()
                    .singlepart(part(ContentType::TEXT_PLAIN, text))
                    .singlepart(part(ContentType::TEXT_HTML, html)),
            )
            .map_err(|e| MatrixError::internal(format_args!("building a {stem} mail: {e}")))?;
        let pool = self.pool.get_or_init(|| self.transport.clone().build());
        match pool.send(message).await {
            Ok(_) => {
                tracing::info!(template = stem, "mail sent");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    template = stem,
                    smtp = %self.target,
                    kind = error_kind(&e),
                    code = e.status().map(|c| c.to_string()),
                    "mail could not be sent"
                );
                Err(MatrixError::new(
                    StatusCode::BAD_REQUEST,
                    ErrCode::EMAIL_SEND_ERROR,
                    "The mail could not be sent",
                ))
            }
        }
    }
}

/// An address the SMTP library accepts, or 400 `M_INVALID_EMAIL`.
pub(crate) fn parse_address(address: &str) -> Result<Address, MatrixError> {
    address.parse().map_err(|_| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrCode::INVALID_EMAIL,
            "Invalid email address",
        )
    })
}

fn part(content_type: ContentType, body: String) -> SinglePart {
    SinglePart::builder()
        .header(content_type)
        // Safe for any text, long lines and non-ASCII names alike.
        .header(ContentTransferEncoding::QuotedPrintable)
        .body(body)
}

/// A subject on one line: templates may end with a newline, and values
/// (room names) may hold any whitespace.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What went wrong, without the server's words (which may quote the
/// recipient).
fn error_kind(e: &lettre::transport::smtp::Error) -> &'static str {
    if e.is_permanent() {
        "permanent rejection"
    } else if e.is_transient() {
        "transient rejection"
    } else if e.is_timeout() {
        "timeout"
    } else if e.is_tls() {
        "TLS"
    } else if e.is_response() {
        "unexpected reply"
    } else if e.is_client() {
        "client"
    } else {
        "connection"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invite_context(room_type: Value, invite_link: Value) -> Value {
        json!({
            "sender_display_name": "Alice <Admin>",
            "sender": "@alice:example.org",
            "room_name": "Book club",
            "room_alias": "#books:example.org",
            "room_id": "!abc:example.org",
            "room_type": room_type,
            "web_client_location": "https://chat.example.org",
            "invite_link": invite_link,
        })
    }

    /// Every built-in template renders; HTML escapes values, text does not;
    /// `brand` comes from config unless the context sets it.
    #[test]
    fn built_in_templates_render() {
        let templates = load_templates(&EmailConfig {
            brand: "Example Chat".to_owned(),
            ..EmailConfig::default()
        })
        .unwrap();
        let validation = json!({
            "token": "tok_123",
            "link": "https://is.example/_matrix/identity/v2/validate/email/submitToken?sid=1&client_secret=s&token=tok_123",
        });
        let subject = templates
            .render("validation_subject.txt", &validation)
            .unwrap();
        assert!(subject.contains("Example Chat"), "{subject}");
        assert!(!one_line(&subject).contains('\n'));
        let text = templates.render("validation.txt", &validation).unwrap();
        assert!(
            text.contains("tok_123") && text.contains("sid=1&client_secret=s"),
            "{text}"
        );
        let html = templates.render("validation.html", &validation).unwrap();
        assert!(html.contains("sid=1&amp;client_secret=s"), "{html}");
        assert!(html.contains("Example Chat"));

        let link = "https://chat.example.org/#/room/!abc:example.org";
        let invite = invite_context(Value::Null, json!(link));
        let subject = one_line(&templates.render("invite_subject.txt", &invite).unwrap());
        assert_eq!(
            subject,
            "Alice <Admin> invited you to Book club on Example Chat"
        );
        let text = templates.render("invite.txt", &invite).unwrap();
        assert!(
            text.contains(link) && text.contains("@alice:example.org"),
            "{text}"
        );
        let html = templates.render("invite.html", &invite).unwrap();
        assert!(
            html.contains("Alice &lt;Admin&gt;") && !html.contains("<Admin>"),
            "{html}"
        );
        assert!(
            html.contains("href=\"https:&#x2f;&#x2f;chat.example.org")
                || html.contains("href=\"https://chat.example.org"),
            "{html}"
        );

        // A space, no link, no display name, no room name.
        let mut space = invite_context(json!("m.space"), Value::Null);
        space["sender_display_name"] = Value::Null;
        space["room_name"] = Value::Null;
        let subject = one_line(&templates.render("invite_subject.txt", &space).unwrap());
        assert_eq!(
            subject,
            "@alice:example.org invited you to the space #books:example.org on Example Chat"
        );
        for name in ["invite.txt", "invite.html"] {
            let body = templates.render(name, &space).unwrap();
            assert!(!body.contains("#/room/"), "{name}: {body}");
            assert!(body.contains("space"), "{name}: {body}");
        }

        let sms = templates
            .render("validation_sms.txt", &json!({"token": "123456"}))
            .unwrap();
        assert_eq!(sms.trim(), "123456 is your Example Chat verification code.");
        let ok = templates
            .render("validated.html", &json!({"medium": "email"}))
            .unwrap();
        assert!(ok.contains("email address"), "{ok}");
        let failed = templates
            .render(
                "validation_failed.html",
                &json!({"reason": "It <expired>."}),
            )
            .unwrap();
        assert!(failed.contains("It &lt;expired&gt;."), "{failed}");
        let branded = templates
            .render(
                "validation_sms.txt",
                &json!({"token": "1", "brand": "Other"}),
            )
            .unwrap();
        assert!(branded.contains("Other"));
    }

    /// A file in `templates_dir` named like a built-in replaces it, and can
    /// include extra files from the same directory; the others stay.
    #[test]
    fn templates_dir_overrides_built_ins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("validation.txt"),
            "{% include \"footer.txt\" %}: {{ token }}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("footer.txt"), "{{ brand }} says").unwrap();
        std::fs::write(dir.path().join("notes.md"), "{{ broken").unwrap();
        let config = |dir: &std::path::Path| EmailConfig {
            brand: "Brand".to_owned(),
            templates_dir: Some(dir.to_owned()),
            ..EmailConfig::default()
        };
        let templates = load_templates(&config(dir.path())).unwrap();
        let text = templates
            .render("validation.txt", &json!({"token": "t0k"}))
            .unwrap();
        assert_eq!(text.trim(), "Brand says: t0k");
        let html = templates
            .render(
                "validation.html",
                &json!({"token": "t0k", "link": "https://x"}),
            )
            .unwrap();
        assert!(html.contains("t0k") && html.contains("<html"));

        std::fs::write(dir.path().join("invite.html"), "{% if %}").unwrap();
        let broken = load_templates(&config(dir.path())).unwrap_err().to_string();
        assert!(broken.contains("invite.html"), "{broken}");
        let missing = load_templates(&config(&dir.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(
            missing.contains("identity.email.templates_dir"),
            "{missing}"
        );
    }

    /// Config errors name the key to fix.
    #[test]
    fn config_errors_name_the_key() {
        let mut config = EmailConfig::default();
        assert!(Mailer::new(&config).is_ok());
        config.smtp_username = Some("mailer".to_owned());
        assert!(Mailer::new(&config).unwrap_err().contains("smtp_password"));
        config.smtp_username = None;
        config.from = "not an address".to_owned();
        assert!(
            Mailer::new(&config)
                .unwrap_err()
                .contains("identity.email.from")
        );
        assert!(parse_address("a@b.example").is_ok());
        assert_eq!(
            parse_address("a b@c").unwrap_err().errcode.0,
            "M_INVALID_EMAIL"
        );
    }
}
