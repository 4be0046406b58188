//! mcrelay: a multicast video stream relay engine for VMS recorder hosts.
pub mod config;
pub mod emit;
pub mod media;
pub mod rtp;
