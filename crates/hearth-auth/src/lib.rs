//! The auth and terms layer shared by the identity service and the
//! integration manager: OpenID accounts, service tokens, terms acceptance.
//! It gains its content with the identity issue.
