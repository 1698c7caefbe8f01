//! PLACEHOLDER: replaced by the validation helper.
use hearth_core::MatrixError;
pub(crate) async fn email_request_token() -> Result<(), MatrixError> { todo!() }
pub(crate) async fn msisdn_request_token() -> Result<(), MatrixError> { todo!() }
pub(crate) async fn submit_token_get() -> Result<(), MatrixError> { todo!() }
pub(crate) async fn submit_token_post() -> Result<(), MatrixError> { todo!() }
