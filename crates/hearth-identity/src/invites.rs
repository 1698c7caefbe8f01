//! PLACEHOLDER: replaced by the invites helper.
use crate::IdentityState;
use hearth_core::MatrixError;
use hearth_core::ids::UserId;
pub(crate) async fn store_invite() -> Result<(), MatrixError> { todo!() }
pub(crate) async fn sign_ed25519() -> Result<(), MatrixError> { todo!() }
pub(crate) async fn on_bound(
    _state: &IdentityState,
    _tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    _medium: &str,
    _address: &str,
    _mxid: &UserId,
) -> Result<(), MatrixError> {
    Ok(())
}
