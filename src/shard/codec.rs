//! bincode 2 (serde) encoding of state-machine values: the storage module's codec.
pub use crate::storage::{decode, encode};
