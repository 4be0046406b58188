//! Multicast emit: each channel sent once on its group, batched.

pub mod batch;
pub mod fence;
pub mod socket;

pub use fence::Fence;
pub use socket::{MulticastSender, SendMode, SendStats};
