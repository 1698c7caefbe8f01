//! Test helpers shared by the service tests of every crate and the
//! end-to-end suite (a dev-dependency only; never part of the binary).

pub mod federation;
