//! Who is connecting: the device table, the address index built from it, and the SSH
//! principal derived from a user's email.

pub mod devices;
mod index;
pub mod principal;

pub use index::{Identity, IdentityIndex};
