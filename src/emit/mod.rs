//! Multicast emit: each channel sent once on its group, batched.

pub mod batch;
pub mod socket;

pub use socket::{MulticastSender, SendMode, SendStats};
