//! Checking a homeserver's OpenID token (Client-Server "OpenID", Server-Server
//! `GET /_matrix/federation/v1/openid/userinfo`).

use hearth_core::ids::{ServerName, UserId};
use hearth_core::{MatrixError, Redacted};
use hearth_federation::{FederationClient, FederationError};
use serde::Deserialize;

/// Longest OpenID access token passed on to a homeserver. Synapse's are 24
/// characters; the bound leaves room for other homeservers' formats while
/// keeping the userinfo URL far below what servers accept (a 64 KiB token
/// made the request fail at the homeserver, which looked like our fault).
pub(crate) const MAX_ACCESS_TOKEN_LEN: usize = 1024;

/// The body of `POST /account/register`: what the homeserver's
/// `/openid/request_token` returned.
#[derive(Debug, Deserialize)]
pub struct OpenIdCredentials {
    pub access_token: Redacted<String>,
    #[serde(default)]
    pub token_type: Option<String>,
    pub matrix_server_name: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// Asks the homeserver who the token belongs to. The answer must be a user
/// of that same homeserver, or anyone could vouch for anyone.
pub(crate) async fn userinfo(
    federation: &FederationClient,
    credentials: &OpenIdCredentials,
) -> Result<UserId, MatrixError> {
    let invalid = || MatrixError::unauthorized("Supplied OpenID credentials are invalid");
    // Every field sent on is bounded here, so an oversized one is the
    // client's 400 and never a failed request to the homeserver.
    if credentials.access_token.expose().len() > MAX_ACCESS_TOKEN_LEN {
        return Err(MatrixError::invalid_param(format!(
            "access_token is longer than {MAX_ACCESS_TOKEN_LEN} bytes"
        )));
    }
    if credentials
        .token_type
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("Bearer"))
    {
        return Err(MatrixError::invalid_param("token_type must be Bearer"));
    }
    // At most 255 characters, as the grammar bounds it.
    let server = ServerName::parse(&credentials.matrix_server_name)
        .map_err(|_| MatrixError::invalid_param("matrix_server_name is not a server name"))?;
    let token = credentials.access_token.expose();
    let path = format!(
        "/_matrix/federation/v1/openid/userinfo?access_token={}",
        hearth_core::http::percent_encode(token)
    );
    let answer = match federation.get_json(&server, &path).await {
        Ok(answer) => answer,
        Err(FederationError::Status { status, .. }) => {
            tracing::info!(%server, %status, "homeserver refused the OpenID token");
            return Err(invalid());
        }
        Err(e) => {
            // The client named the homeserver: one that does not answer is
            // not this server's fault, so `info`, not `warn` or `error`.
            tracing::info!(error = %e, "could not reach the homeserver to check an OpenID token");
            return Err(MatrixError::new(
                http::StatusCode::BAD_GATEWAY,
                hearth_core::ErrCode::UNKNOWN,
                "Could not reach the homeserver to check the OpenID token",
            ));
        }
    };
    let user_id = answer
        .get("sub")
        .and_then(|s| s.as_str())
        .and_then(|s| UserId::parse(s).ok())
        .ok_or_else(invalid)?;
    if user_id.server_name() != &server {
        tracing::warn!(%server, "homeserver vouched for a user of another server");
        return Err(invalid());
    }
    Ok(user_id)
}
