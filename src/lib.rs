//! mcrelay: a multicast video stream relay engine for VMS recorder hosts.
pub mod camera;
pub mod channel;
pub mod config;
pub mod control;
pub mod demo;
pub mod emit;
pub mod failover;
pub mod ingest;
pub mod media;
pub mod metrics;
pub mod record;
pub mod rtp;
pub mod runtime;
pub mod serve;
pub mod spec;
