//! mcrelay: a multicast video stream relay engine for VMS recorder hosts.
pub mod channel;
pub mod config;
pub mod emit;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod rtp;
